"""Checkpoints: every worker's complete state, written atomically and verified before use.

Layout under ``RUN_DIR/checkpoints/``::

    step_00000100/worker_00003.pt   one file per worker (its state is per worker, not per process,
                                    so a run can resume with a different number of processes)
    step_00000100/manifest.json     written last: step, workers, size and SHA-256 of every file
    latest.json                     names the latest complete checkpoint

Each file is written to a temporary name, flushed and renamed. Loading walks the checkpoints from
the newest, refuses (with one line) any whose files do not match their manifest, and uses the
newest complete one. Files load with ``torch.load(weights_only=True)``: they cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from gossip.network import Network

DIRECTORY = "checkpoints"
KEEP = 2


def worker_file(worker: int) -> str:
    return f"worker_{worker:05d}.pt"


def save(run_dir: Path, step: int, states: dict[int, dict[str, Any]], network: Network) -> Path:
    """Write this process's worker ``states`` for ``step``; process 0 completes the checkpoint."""
    root = run_dir / DIRECTORY
    directory = root / f"step_{step:08d}"
    directory.mkdir(parents=True, exist_ok=True)
    digests = {}
    for worker, state in states.items():
        path = directory / worker_file(worker)
        _atomic_write(path, lambda f, s=state: torch.save(s, f))
        digests[path.name] = _digest(path)
    digests = {k: v for part in network.all_gather_object(digests) for k, v in part.items()}
    if network.rank == 0:
        if len(digests) != network.n:
            raise RuntimeError(f"checkpoint step {step}: {len(digests)} worker files for {network.n} workers")
        manifest = {"step": step, "workers": network.n, "files": dict(sorted(digests.items()))}
        _atomic_write(directory / "manifest.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        _atomic_write(root / "latest.json", lambda f: f.write(json.dumps({"step": step, "dir": directory.name}).encode()))
        for old in complete_checkpoints(root)[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
    return directory


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


def _atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(file)`` to a temporary file, flush it to disk, then rename."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(temporary, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
