"""The docs cannot rot: every ```python block of README.md and docs/*.md runs and prints what its
comments say, every ```bash block marked ``<!-- runnable -->`` runs (``<!-- runnable, shortened -->``:
its training commands cut to a few steps), and the configuration reference matches the dataclasses.
Blocks left unmarked cannot run here: they install packages, need data sets that are downloaded,
GPUs, several machines, or configs the reader writes."""

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
# Training commands as documented, shortened to a few steps by the test (see shortened()).
SHORTENED = blocks(r"<!-- runnable, shortened -->\n```bash\n(.*?)```")


SHORT = " --set train.epochs=null --set train.steps=2 --set train.eval_every=2 --set train.local_eval=false --no-progress"


def shortened(code: str) -> str:
    """Each ``gossip.train --config`` line trains 2 steps (one record, no per-worker evaluation) and
    each ``--resume`` continues to step 4, so that the documented commands run here in seconds;
    flags, files and launchers stay as documented."""
    lines = []
    for line in code.splitlines():
        command, hash_, comment = line.partition(" #")
        padding = command[len(command.rstrip()):]
        command = command.rstrip()
        if "gossip.train" in command and "--config" in command:
            command += SHORT
        elif "gossip.train" in command and "--resume" in command:
            command = re.sub(r"--set train\.steps=\d+", "--set train.steps=4", command) + " --no-progress"
        lines.append(command + padding + hash_ + comment)
    return "\n".join(lines) + "\n"


NUMBER = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
PRINT_WITH_VALUE = re.compile(r"^\s*print\(.*\)\s+#\s*(?P<comment>\S.*)$")


def expected_part(comment: str) -> str:
    """The value a ``print(...)  # VALUE`` comment shows: the comment up to its explanation, which
    starts with ": ", " = " or " (" (``# 88 = degree 2 x ...``, ``# [40, 0, 0, 0]: counted ...``)."""
    cut = min((comment.find(sep) for sep in (": ", " = ", " (") if sep in comment), default=len(comment))
    return comment[:cut].strip()


def matches(expected: str, printed: str) -> bool:
    """Whether ``printed`` is what ``expected`` shows: text literally, ``...`` for anything (after a
    number: its further digits), ``< X`` for a number below X, and every number to the precision
    shown, i.e. within half a unit of its last digit (``7.3e-11`` accepts 7.25e-11 to 7.35e-11)."""
    printed = printed.strip()
    if expected.startswith("< "):
        return re.fullmatch(NUMBER, printed) is not None and float(printed) < float(expected[2:])
    pattern, numbers, position = "", [], 0
    for found in re.finditer(NUMBER + r"(?:\.\.\.)?|\.\.\.", expected):
        pattern += re.escape(expected[position:found.start()])
        token = found.group()
        if token == "...":
            pattern += ".*?"
        else:
            pattern += f"({NUMBER})"
            numbers.append(token.removesuffix("..."))
        position = found.end()
    pattern += re.escape(expected[position:])
    match = re.fullmatch(pattern, printed)
    if match is None:
        return False
    for shown, got in zip(numbers, match.groups()):
        mantissa, _, exponent = shown.partition("e")
        decimals = len(mantissa.partition(".")[2])
        unit = 10.0 ** (int(exponent or 0) - decimals)
        if abs(float(got) - float(shown)) > unit / 2 * (1 + 1e-9):
            return False
    return True


@pytest.mark.parametrize("expected, printed, ok", [
    ("7.3e-11", "7.26e-11", True), ("7.3e-11", "7.4e-11", False), ("[1, 15] 0.333...", "[1, 15] 0.3333333", True),
    ("16 2 torus(rows=4, cols=4, weights=...)", "16 2 torus(rows=4, cols=4, weights=uniform)", True),
    ("88", "89", False), ("0.64 0.6", "0.6399999999999997 0.6", True), ("< 0.1", "0.2", False),
    ("[40, 0, 0, 0]", "[40, 0, 0]", False),
])
def test_the_comparison_of_printed_values(expected, printed, ok):
    assert matches(expected, printed) is ok


@pytest.mark.parametrize("where, code", PYTHON, ids=[w for w, _ in PYTHON])
def test_python_block_runs_and_prints_what_its_comments_say(where, code, tmp_path, monkeypatch):
    """Every ``print(...)  # VALUE`` line prints VALUE (see :func:`matches`)."""
    monkeypatch.chdir(tmp_path)
    printed: dict[int, list[str]] = {}

    def recording_print(*args, sep=" ", end="\n", file=None, flush=False):
        if file is not None:
            return print(*args, sep=sep, end=end, file=file, flush=flush)
        printed.setdefault(sys._getframe(1).f_lineno, []).append(sep.join(map(str, args)))

    exec(compile(code, where, "exec"), {"__name__": "__docs__", "print": recording_print})
    for lineno, line in enumerate(code.splitlines(), start=1):
        found = PRINT_WITH_VALUE.match(line)
        if found:
            expected = expected_part(found.group("comment"))
            assert printed.get(lineno), f"{where} line {lineno} printed nothing"
            for text in printed[lineno]:
                assert matches(expected, text), f"{where} line {lineno}: printed {text!r}, the comment says {expected!r}"


@pytest.mark.parametrize("where, code", BASH + [(w, shortened(c)) for w, c in SHORTENED],
                         ids=[w for w, _ in BASH + SHORTENED])
def test_runnable_bash_block_runs(where, code, tmp_path):
    """In a fresh directory that sees the repository's configs/ and scripts/ (what a block writes,
    runs/..., lands there)."""
    for name in ("configs", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_shortened_blocks_are_shortened():
    assert shortened("python -m gossip.train --config c.yaml   # note\n") == \
        "python -m gossip.train --config c.yaml" + SHORT + "   # note\n"
    assert "--set train.steps=4 --no-progress" in shortened("python -m gossip.train --resume r --set train.steps=4000")


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
