"""What ChocoSGD, DeepSqueeze and Moniqua share: compressed messages, one buffer per neighbour.

A worker's flat vector is encoded per parameter tensor (one scale per tensor, as the papers count
it) and the encoded tensors are laid end to end in ONE uint8 buffer, the same for every neighbour.
Each sender's buffer is decoded once per process, and the sender uses the decoded value of its own
buffer too, so that sender and receivers agree on what was sent to the last bit.

Codec randomness (random-k indices, stochastic rounding) comes from a generator seeded by
``(seed, "codec", sender, step)``: the receivers of a random-k message rebuild the sender's
indices from it, and no generator outlives its step, so the algorithms keep no generator state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Sequence

import torch

from gossip.algorithms import compression
from gossip.algorithms.base import Algorithm, GossipAlgorithm, GossipOptions
from gossip.comm.messages import PendingRound
from gossip.comm.seeding import generator
from topologies import Topology

Inbox = dict[tuple[int, int], torch.Tensor]

class PackedCodec:
    """One codec applied to every parameter tensor of a flat vector, the wires laid end to end.

    The per-tensor value and wire offsets are computed once, from the parameter ``shapes``; each
    tensor is encoded straight into its slice of the wire and decoded straight into its slice of
    the flat vector (the codecs' ``out=``), with no per-tensor temporaries.
    """

    def __init__(self, codec: compression.Codec, shapes: Sequence[torch.Size]) -> None:
        self.codec = codec
        numels = [math.prod(shape) for shape in shapes]
        value_ends = list(accumulate(numels))
        wire_ends = list(accumulate(codec.wire_bytes(numel) for numel in numels))
        self.value_ranges = list(zip([0] + value_ends[:-1], value_ends))
        self.wire_ranges = list(zip([0] + wire_ends[:-1], wire_ends))
        self.numel = value_ends[-1]
        self.wire_bytes = wire_ends[-1]

    def encode(self, flat: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """The wire buffer (1-D uint8, ``wire_bytes`` long) of the flat fp32 vector ``flat``."""
        wire = torch.empty(self.wire_bytes, dtype=torch.uint8, device=flat.device)
        for (v0, v1), (b0, b1) in zip(self.value_ranges, self.wire_ranges):
            self.codec.encode(flat[v0:v1], gen, out=wire[b0:b1])
        return wire

    def decode(self, wire: torch.Tensor, device: torch.device, gen: torch.Generator | None = None) -> torch.Tensor:
        """The flat fp32 vector on ``device`` that ``wire`` stands for."""
        flat = torch.empty(self.numel, dtype=torch.float32, device=device)
        for (v0, v1), (b0, b1) in zip(self.value_ranges, self.wire_ranges):
            self.codec.decode(wire[b0:b1], flat[v0:v1], gen, out=flat[v0:v1])
        return flat


class CompressedGossip:
    """Rounds of compressed messages between an algorithm's local workers and their neighbours."""

    def __init__(self, algorithm: Algorithm, codec: compression.Codec) -> None:
        self.algorithm = algorithm
        self.packed = PackedCodec(codec, [view.shape for view in algorithm.workers[0].views])
        self.device = algorithm.network.device

    def start(self, topology: Topology, t: int, vectors: dict[int, torch.Tensor]) -> "PendingMessages":
        """Encode every local worker's ``vectors[i]`` and post it to all of ``i``'s neighbours."""
        needs = self.packed.codec.encode_needs_generator
        wires = {i: self.packed.encode(x, self._generator(i, t, needs)) for i, x in vectors.items()}
        return PendingMessages(self, t, wires, self.algorithm.send_to_neighbours(topology, wires))

    def decode(self, sender: int, t: int, wire: torch.Tensor) -> torch.Tensor:
        """The vector that ``sender``'s buffer of step ``t`` stands for."""
        gen = self._generator(sender, t, self.packed.codec.decode_needs_generator)
        return self.packed.decode(wire, self.device, gen)

    def _generator(self, sender: int, t: int, needed: bool) -> torch.Generator | None:
        return generator(self.algorithm.seed, "codec", sender, t, device=self.device) if needed else None


@dataclass
class PendingMessages:
    """A round of compressed messages in flight."""

    gossip: CompressedGossip
    t: int
    wires: dict[int, torch.Tensor]
    round: PendingRound

    def wait(self) -> tuple[dict[int, torch.Tensor], Inbox]:
        """``(own, inbox)``: the decoded message of every local sender, and ``{(j, i): decoded}``
        for every message a local worker received (decoded once per sender)."""
        received = self.round.wait()
        decoded = {i: self.gossip.decode(i, self.t, wire) for i, wire in self.wires.items()}
        for (j, _), wire in sorted(received.items()):
            if j not in decoded:
                decoded[j] = self.gossip.decode(j, self.t, wire)
        own = {i: decoded[i] for i in self.wires}
        return own, {(j, i): decoded[j] for (j, i) in received}


class CompressedAlgorithm(GossipAlgorithm):
    """An algorithm whose messages are its options' codec applied per parameter tensor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gossip = CompressedGossip(self, self.options.build_codec())

    @classmethod
    def bytes_per_step(cls, options: Any, shapes: list[torch.Size], topology: Topology, worker: int) -> int:
        return topology.degree(worker) * PackedCodec(options.build_codec(), shapes).wire_bytes

    def zeros(self) -> dict[int, torch.Tensor]:
        """A zero vector per local worker (the initial state of replicas and memories)."""
        return {w.id: torch.zeros_like(w.params) for w in self.workers}


@dataclass
class CodecOptions(GossipOptions):
    """The codec key of ChocoSGD and DeepSqueeze: a nested ``codec`` section."""

    codec: compression.CodecConfig = field(default_factory=compression.CodecConfig, metadata={
        "help": "message codec, applied per parameter tensor: {name: topk, fraction: 0.01}, or a name "
                "alone (sign) for a codec without keys", "bounds": {}})

    def __post_init__(self) -> None:
        # Choco.Options(codec="sign") or codec={"name": "topk", "fraction": 0.01}, as in YAML
        if isinstance(self.codec, (str, dict)):
            options = {"name": self.codec} if isinstance(self.codec, str) else dict(self.codec)
            self.codec = compression.CodecConfig(options.pop("name", "sign"), options)

    def build_codec(self) -> compression.Codec:
        """The codec the ``codec`` section names."""
        return self.codec.build()
