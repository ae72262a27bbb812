"""Every ```python block of the README runs, so the examples cannot rot."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("index, code", list(enumerate(python_blocks(ROOT / "README.md"))))
def test_readme_example_runs(index, code, capsys):
    exec(compile(code, f"README.md block {index}", "exec"), {})


def test_readme_library_example_reaches_consensus(capsys):
    (loop,) = [code for code in python_blocks(ROOT / "README.md") if "DPSGD" in code]
    exec(compile(loop, "README.md", "exec"), {})
    assert float(capsys.readouterr().out.split()[-1]) < 0.05
