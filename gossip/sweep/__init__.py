"""Sweeps: a grid of runs over seeds (``python -m gossip.sweep``), its file format and its tables."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """``python -m gossip.sweep``: run a sweep (see :func:`gossip.sweep.cli.main`)."""
    from gossip.sweep.cli import main as run

    return run(argv)
