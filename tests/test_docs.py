"""The docs cannot rot: every ```python block of README.md and docs/*.md runs, every ```bash block
marked ``<!-- runnable -->`` runs, and the configuration reference matches the dataclasses."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from gossip.config import reference_markdown

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(pattern: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for index, code in enumerate(re.findall(pattern, page.read_text(), flags=re.S)):
            found.append((f"{page.relative_to(ROOT)}#{index}", code))
    return found


PYTHON = blocks(r"```python\n(.*?)```")
BASH = blocks(r"<!-- runnable -->\n```bash\n(.*?)```")


@pytest.mark.parametrize("where, code", PYTHON, ids=[w for w, _ in PYTHON])
def test_python_block_runs(where, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("where, code", BASH, ids=[w for w, _ in BASH])
def test_runnable_bash_block_runs(where, code, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_readme_library_example_reaches_consensus(capsys):
    (loop,) = [code for where, code in PYTHON if where.startswith("README") and "DPSGD" in code]
    exec(compile(loop, "README.md", "exec"), {})
    assert float(capsys.readouterr().out.split()[-1]) < 0.1


def test_topology_table_is_current():
    result = subprocess.run([sys.executable, str(ROOT / "scripts/topology_table.py")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in (ROOT / "docs/topologies.md").read_text(), \
        "stale: paste the output of python scripts/topology_table.py into docs/topologies.md"


def test_configuration_reference_is_current():
    page = ROOT / "docs" / "configuration.md"
    assert page.read_text() == reference_markdown(), "stale: run python scripts/config_reference.py"
