"""Checkpoints: every worker's complete state, written atomically and verified before use.

Layout under ``RUN_DIR/checkpoints/``::

    step_00000100/worker_00003.pt   one file per worker (its state is per worker, not per process,
                                    so a run can resume with a different number of processes)
    step_00000100/digests_00001.json  size and SHA-256 of the files that process 1 wrote
    step_00000100/manifest.json     written last, by process 0, once every worker's file is
                                    there: step, workers, size and SHA-256 of every file
    latest.json                     names the latest complete checkpoint

A checkpoint is complete (listed, loadable) once its manifest exists. The files are written in the
background (:class:`Writer`), each to a temporary name, flushed and renamed. Loading walks the
checkpoints from the newest, refuses (with one line) any whose files do not match their manifest,
and uses the newest complete one. Files load with ``torch.load(weights_only=True)``: they cannot run code.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

DIRECTORY = "checkpoints"


def worker_file(worker: int) -> str:
    return f"worker_{worker:05d}.pt"


def snapshot(value: Any) -> Any:
    """A copy of a worker state that training cannot change: every tensor cloned to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return copy.deepcopy(value)


class Writer:
    """Writes checkpoints in a background thread, one at a time.

    :meth:`save` copies the states (the only time a step waits, besides a previous checkpoint that
    is still being written) and returns. Every process writes its workers' files and then a
    ``digests_RANK.json``; process 0 waits (up to ``timeout_s``) for every worker's digest, writes
    the manifest (which makes the checkpoint complete), ``latest.json``, and deletes the complete
    checkpoints beyond the newest ``keep`` (0: keeps all)."""

    def __init__(self, run_dir: Path, rank: int, workers: int, keep: int, timeout_s: float) -> None:
        self.root = run_dir / DIRECTORY
        self.rank, self.workers, self.keep, self.timeout_s = rank, workers, keep, timeout_s
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, step: int, states: dict[int, dict[str, Any]]) -> None:
        """Copy this process's worker ``states`` for ``step`` and write them in the background."""
        self.wait()
        copied = snapshot(states)
        self._thread = threading.Thread(target=self._write, args=(step, copied), daemon=True,
                                        name=f"checkpoint-{step}")
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the checkpoint being written (re-raising its error); False if still writing."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return True

    def _write(self, step: int, states: dict[int, dict[str, Any]]) -> None:
        try:
            directory = self.root / f"step_{step:08d}"
            directory.mkdir(parents=True, exist_ok=True)
            digests = {}
            for worker, state in states.items():
                path = directory / worker_file(worker)
                atomic_write(path, lambda f, s=state: torch.save(s, f))
                digests[path.name] = _digest(path)
            atomic_write(directory / f"digests_{self.rank:05d}.json", lambda f: f.write(json.dumps(digests).encode()))
            if self.rank == 0:
                self._complete(directory, step)
        except BaseException as exc:  # re-raised by wait() in the training thread
            self._error = exc

    def _complete(self, directory: Path, step: int) -> None:
        deadline = time.monotonic() + self.timeout_s
        while len(files := _gathered_digests(directory)) < self.workers:
            if time.monotonic() > deadline:
                print(f"warning: checkpoint {directory.name} stays incomplete: {len(files)} of {self.workers} "
                      f"worker files after {self.timeout_s:g} s", file=sys.stderr)
                return
            time.sleep(0.05)
        manifest = {"step": step, "workers": self.workers, "files": dict(sorted(files.items()))}
        atomic_write(directory / "manifest.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        atomic_write(self.root / "latest.json",
                      lambda f: f.write(json.dumps({"step": step, "dir": directory.name}).encode()))
        if self.keep:
            for old in complete_checkpoints(self.root)[self.keep:]:
                shutil.rmtree(old, ignore_errors=True)


def _gathered_digests(directory: Path) -> dict[str, Any]:
    """The worker files' digests that the processes have written so far into ``directory``."""
    files: dict[str, Any] = {}
    for part in directory.glob("digests_*.json"):
        files.update(json.loads(part.read_text()))
    return files


def remove_after(run_dir: Path, step: int) -> None:
    """Delete the checkpoint directories after ``step`` (refused or incomplete ones, when a run
    continues from ``step``; all of them for ``step`` -1), so that none is mistaken for a new one."""
    for directory in (run_dir / DIRECTORY).glob("step_*"):
        if int(directory.name.removeprefix("step_")) > step:
            shutil.rmtree(directory, ignore_errors=True)


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories that have a manifest, newest first."""
    if not root.is_dir():
        return []
    return sorted((d for d in root.glob("step_*") if (d / "manifest.json").is_file()), reverse=True)


def find_latest(run_dir: Path) -> Path | None:
    """The newest checkpoint whose files all match their manifest; each refused one is reported
    in one line on stderr."""
    for directory in complete_checkpoints(run_dir / DIRECTORY):
        problem = _verify(directory)
        if problem is None:
            return directory
        print(f"warning: refusing checkpoint {directory.name}: {problem}", file=sys.stderr)
    return None


def load_worker(directory: Path, worker: int, device: torch.device) -> dict[str, Any]:
    """One worker's state from a verified checkpoint directory (no code can run while loading)."""
    return torch.load(directory / worker_file(worker), map_location=device, weights_only=True)


def manifest_step(directory: Path) -> int:
    return json.loads((directory / "manifest.json").read_text())["step"]


def _verify(directory: Path) -> str | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({exc})"
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        actual = _digest(path)
        if actual["bytes"] != expected["bytes"]:
            return f"{name} has {actual['bytes']} bytes, the manifest says {expected['bytes']} (truncated?)"
        if actual["sha256"] != expected["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest (corrupt)"
    return None


def _digest(path: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"bytes": path.stat().st_size, "sha256": sha.hexdigest()}


def atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(file)`` (a binary file, or ``str`` text) to a temporary file next to
    ``path``, flush it to disk, then rename it over ``path``: a reader never sees half a file, and
    a failed write leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            f.write(write.encode()) if isinstance(write, str) else write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
