"""Seeds derived from the run's seed and an identity (a worker, an edge, a purpose), never from
the process, so that the same worker draws the same numbers wherever it runs."""

from __future__ import annotations

import hashlib

import torch


def seed_for(seed: int, *key: object) -> int:
    """A 63-bit seed determined by ``seed`` and ``key`` (e.g. ``("data", worker)``).

    >>> seed_for(0, "edge", 1, 2) == seed_for(0, "edge", 1, 2) != seed_for(0, "edge", 2, 3)
    True
    """
    digest = hashlib.sha256(repr((seed,) + key).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, *key: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded by :func:`seed_for`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed_for(seed, *key))
    return gen
