"""The run: the command line (``python -m gossip.train``), the training loop, the workers with
their local optimizers and schedules, checkpoints, and :class:`DecentralizedOptimizer` for a
torchrun script of your own."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """``python -m gossip.train``: train one config (see :func:`gossip.train.cli.main`)."""
    from gossip.train.cli import main as run

    return run(argv)
