"""Message codecs with fixed-size wire formats for compressed gossip.

Compressed decentralized SGD (ChocoSGD, DeepSqueeze, Moniqua) sends each
neighbour a compressed message instead of a full fp32 tensor.  Every codec here
turns a float tensor into a 1-D ``torch.uint8`` tensor whose length depends only
on the tensor's number of elements ``d`` (``wire_bytes(d)``), so receivers can
pre-size their buffers and the bytes a codec reports are exactly the bytes it
sends.

Wire conventions:

* Multi-byte numbers (fp32 values, int32 indices) are stored in the machine's
  native byte order, which is little-endian on every platform PyTorch supports.
* Sub-byte codes are packed by :func:`pack_bits` into a little-endian bit
  stream: code ``i`` occupies stream bits ``[i*b, (i+1)*b)``, least significant
  bit first, and stream bit ``j`` is bit ``j % 8`` of byte ``j // 8``.  The last
  byte is zero-padded.

Randomised codecs draw from a caller-supplied ``torch.Generator`` (seeded by
the caller, e.g. from ``(seed, sender, step)``); random numbers are drawn on the
generator's device and moved to the tensor's device, so encode and decode see
identical draws from identically seeded generators.

All work is vectorised torch and runs on whatever device the input lives on.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from dataclasses import MISSING, dataclass, fields
from typing import ClassVar

import torch

__all__ = [
    "CODECS",
    "QSGD",
    "Codec",
    "Identity",
    "Moniqua",
    "RandomK",
    "SignNorm",
    "Sparsifier",
    "TopK",
    "build",
    "pack_bits",
    "unpack_bits",
]

_INT32_MAX = 2**31 - 1
_OptGen = torch.Generator | None  # generator argument of the private codec hooks


# --------------------------------------------------------------------------- #
# Bit packing and byte helpers
# --------------------------------------------------------------------------- #
def _packed_bytes(count: int, bits: int) -> int:
    """Bytes needed for ``count`` codes of ``bits`` bits each."""
    return (count * bits + 7) // 8


def _bit_shifts(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, dtype=torch.uint8, device=device)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``bits``-bit integer codes into a 1-D uint8 tensor of ``ceil(n*bits/8)`` bytes.

    Bit order is little-endian (see the module docstring); only the low ``bits``
    bits of each code are kept.  Used by every codec that sends sub-byte codes.
    """
    _check_int("bits", bits, 1, 8)
    codes = codes.reshape(-1).to(torch.uint8)
    stream = ((codes.unsqueeze(1) >> _bit_shifts(bits, codes.device)) & 1).reshape(-1)
    padded = stream.new_zeros(8 * _packed_bytes(codes.numel(), bits))
    padded[: stream.numel()] = stream
    return (padded.view(-1, 8) << _bit_shifts(8, codes.device)).sum(1, dtype=torch.uint8)


def unpack_bits(wire: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` codes as a uint8 tensor.

    ``wire`` must be exactly ``ceil(count*bits/8)`` bytes.  Codes come back as
    uint8 (they are below 256); convert before doing signed arithmetic on them.
    """
    _check_int("bits", bits, 1, 8)
    expected = _packed_bytes(count, bits)
    if wire.dtype != torch.uint8 or wire.dim() != 1 or wire.numel() != expected:
        raise ValueError(
            f"expected a 1-D uint8 tensor of {expected} bytes for {count} {bits}-bit codes, "
            f"got {wire.dtype} of shape {tuple(wire.shape)}"
        )
    stream = ((wire.unsqueeze(1) >> _bit_shifts(8, wire.device)) & 1).reshape(-1)
    stream = stream[: count * bits].view(count, bits)
    return (stream << _bit_shifts(bits, wire.device)).sum(1, dtype=torch.uint8)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """Reinterpret a 1-D contiguous tensor as its raw bytes (no copy)."""
    return t.contiguous().view(torch.uint8)


def _from_bytes(wire: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret raw bytes as ``dtype``; copies so the result never aliases (or
    depends on the alignment of) the caller's receive buffer."""
    return wire.clone().view(dtype)


# --------------------------------------------------------------------------- #
# Randomness
# --------------------------------------------------------------------------- #
def _uniform(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` fp32 draws from U[0, 1), made on the generator's device."""
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _stochastic_round(scaled: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Round each entry down or up with P(up) = its fractional part.

    Unbiased (E[result] = scaled) and exact on integers; comparing ``u < frac``
    avoids the float error of ``floor(scaled + u)``, which can round up an integer.
    """
    low = scaled.floor()
    u = _uniform(scaled.numel(), generator, scaled.device)
    return low + (u < scaled - low).to(scaled.dtype)


# --------------------------------------------------------------------------- #
# Option validation
# --------------------------------------------------------------------------- #
def _check_int(name: str, value: object, low: int, high: int) -> None:
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not is_int or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_fraction(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], got {value!r}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


# --------------------------------------------------------------------------- #
# Codecs
# --------------------------------------------------------------------------- #
class Codec(ABC):
    """A fixed-size message codec.

    Subclasses are frozen dataclasses whose fields are exactly the options that
    :func:`build` accepts; they implement ``wire_bytes``, ``_encode`` and
    ``_decode``, while this class does the shared input checks.  Tensors must
    be non-empty.
    """

    name: ClassVar[str]
    encode_needs_generator: ClassVar[bool] = False
    decode_needs_generator: ClassVar[bool] = False

    @abstractmethod
    def wire_bytes(self, numel: int) -> int:
        """Exact length of ``encode``'s output for a tensor of ``numel`` elements."""

    @abstractmethod
    def _encode(self, flat: torch.Tensor, generator: _OptGen) -> torch.Tensor:
        """Encode a contiguous 1-D fp32 tensor."""

    @abstractmethod
    def _decode(self, wire: torch.Tensor, d: int, generator: _OptGen) -> torch.Tensor:
        """Decode ``wire`` (already on the output device) into ``d`` fp32 values."""

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode float tensor ``x`` (any shape, read flattened) into a fresh 1-D
        uint8 tensor of ``wire_bytes(x.numel())`` bytes on ``x``'s device."""
        if not x.is_floating_point() or x.numel() == 0:
            raise ValueError(
                f"{self.name} codec encodes non-empty float tensors, got {x.dtype} {tuple(x.shape)}"
            )
        self._check_generator(generator, self.encode_needs_generator, "encode")
        flat = x.detach().reshape(-1).to(torch.float32).contiguous()
        return self._encode(flat, generator)

    def decode(
        self, wire: torch.Tensor, like: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decode ``wire`` into a new tensor with ``like``'s shape, dtype and device."""
        if like.numel() == 0:
            raise ValueError(f"{self.name} codec cannot decode into an empty tensor")
        expected = self.wire_bytes(like.numel())
        if wire.dtype != torch.uint8 or wire.dim() != 1 or wire.numel() != expected:
            raise ValueError(
                f"{self.name} codec expects a 1-D uint8 wire of {expected} bytes for "
                f"{like.numel()} elements, got {wire.dtype} of shape {tuple(wire.shape)}"
            )
        self._check_generator(generator, self.decode_needs_generator, "decode")
        flat = self._decode(wire.to(like.device), like.numel(), generator)
        return flat.reshape(like.shape).to(like.dtype)

    def _check_generator(self, generator: torch.Generator | None, needed: bool, op: str) -> None:
        if needed and generator is None:
            raise ValueError(f"{self.name} codec needs a torch.Generator to {op}")

    def __repr__(self) -> str:
        options = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"{type(self).__name__}({options})"


@dataclass(frozen=True, repr=False)
class Identity(Codec):
    """Uncompressed baseline. Wire: d fp32 values (4d bytes); exact round trip."""

    name: ClassVar[str] = "identity"

    def wire_bytes(self, numel: int) -> int:
        return 4 * numel

    def _encode(self, flat: torch.Tensor, generator: _OptGen) -> torch.Tensor:
        return _as_bytes(flat).clone()

    def _decode(self, wire: torch.Tensor, d: int, generator: _OptGen) -> torch.Tensor:
        return _from_bytes(wire, torch.float32)


@dataclass(frozen=True, repr=False)
class Sparsifier(Codec):
    """Base of the codecs that send ``k_for(d)`` of the ``d`` entries."""

    fraction: float

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)

    def k_for(self, d: int) -> int:
        """Entries kept out of ``d >= 1``: ``max(1, round(fraction * d))`` with
        Python's ``round`` (halves to even), so at least one and at most d."""
        return max(1, round(self.fraction * d))


@dataclass(frozen=True, repr=False)
class TopK(Sparsifier):
    """Keeps the k largest-magnitude entries (ChocoSGD's top-k).

    Wire: k fp32 values, then their k int32 flat indices (8k bytes).  Decode
    scatters the values into zeros.  Ties in magnitude are broken by torch.topk.
    """

    name: ClassVar[str] = "topk"

    def wire_bytes(self, numel: int) -> int:
        return 8 * self.k_for(numel)

    def _encode(self, flat: torch.Tensor, generator: _OptGen) -> torch.Tensor:
        if flat.numel() > _INT32_MAX:
            raise ValueError(f"topk indices are int32; {flat.numel()} elements is too many")
        indices = torch.topk(flat.abs(), self.k_for(flat.numel()), sorted=False).indices
        return torch.cat([_as_bytes(flat[indices]), _as_bytes(indices.to(torch.int32))])

    def _decode(self, wire: torch.Tensor, d: int, generator: _OptGen) -> torch.Tensor:
        k = self.k_for(d)
        values = _from_bytes(wire[: 4 * k], torch.float32)
        indices = _from_bytes(wire[4 * k :], torch.int32).long()
        return torch.zeros(d, dtype=torch.float32, device=wire.device).scatter_(0, indices, values)


@dataclass(frozen=True, repr=False)
class RandomK(Sparsifier):
    """Sends k entries at indices drawn from a shared generator.

    Wire: the k fp32 values only (4k bytes).  The indices are the first k of
    ``torch.randperm(d)`` drawn from the generator (on its device, O(d) work),
    so the receiver must pass an identically seeded generator to ``decode``.
    With ``rescale`` decode multiplies by d/k, making the estimate unbiased.
    """

    rescale: bool = False
    name: ClassVar[str] = "randomk"
    encode_needs_generator: ClassVar[bool] = True
    decode_needs_generator: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bool("rescale", self.rescale)

    def wire_bytes(self, numel: int) -> int:
        return 4 * self.k_for(numel)

    def _indices(self, d: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        perm = torch.randperm(d, generator=generator, device=generator.device)
        return perm[: self.k_for(d)].to(device)

    def _encode(self, flat: torch.Tensor, generator: _OptGen) -> torch.Tensor:
        return _as_bytes(flat[self._indices(flat.numel(), generator, flat.device)])

    def _decode(self, wire: torch.Tensor, d: int, generator: _OptGen) -> torch.Tensor:
        values = _from_bytes(wire, torch.float32)
        if self.rescale:
            values = values * (d / self.k_for(d))
        indices = self._indices(d, generator, wire.device)
        return torch.zeros(d, dtype=torch.float32, device=wire.device).scatter_(0, indices, values)


@dataclass(frozen=True, repr=False)
class SignNorm(Codec):
    """Scaled sign compression: decodes to ``sign(x) * ||x||_1 / d``.

    Wire: one fp32 scale ``||x||_1 / d``, then one bit per entry (1 for
    ``x >= 0``, 0 for ``x < 0``) packed by :func:`pack_bits`: 4 + ceil(d/8)
    bytes.  sign(0) is taken as +1 so every entry costs exactly one bit.
    """

    name: ClassVar[str] = "sign"

    def wire_bytes(self, numel: int) -> int:
        return 4 + _packed_bytes(numel, 1)

    def _encode(self, flat: torch.Tensor, generator: _OptGen) -> torch.Tensor:
        scale = flat.abs().mean().reshape(1)
        return torch.cat([_as_bytes(scale), pack_bits(flat >= 0, 1)])

    def _decode(self, wire: torch.Tensor, d: int, generator: _OptGen) -> torch.Tensor:
        scale = _from_bytes(wire[:4], torch.float32)
        positive = unpack_bits(wire[4:], 1, d).to(torch.float32)
        return (2 * positive - 1) * scale


@dataclass(frozen=True, repr=False)
class QSGD(Codec):
    """QSGD (Alistarh et al., 2017) with ``levels`` = s levels and stochastic rounding.

    Encode: ``level = |x| * s / ||x||_2`` rounded stochastically (unbiased,
    exact when already an integer), clamped to s against float error.  Decode:
    ``sign * level * ||x||_2 / s``; a zero norm gives all zeros.

    Wire: fp32 ``||x||_2``, then per entry a code ``2 * level + (x < 0)`` of
    b = ceil(log2(s+1)) + 1 bits packed by :func:`pack_bits`:
    4 + ceil(d*b/8) bytes.  ``levels`` is limited to 1..127 so that b <= 8.
    """

    levels: int
    name: ClassVar[str] = "qsgd"
    encode_needs_generator: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_int("levels", self.levels, 1, 127)

    @property
    def bits(self) -> int:
        """Bits per entry: ceil(log2(levels + 1)) for the level plus one sign bit."""
        return self.levels.bit_length() + 1

    def wire_bytes(self, numel: int) -> int:
        return 4 + _packed_bytes(numel, self.bits)

    def _encode(self, flat: torch.Tensor, generator: _OptGen) -> torch.Tensor:
        norm = torch.linalg.vector_norm(flat)
        scaled = torch.where(norm > 0, flat.abs() * self.levels / norm, 0.0)
        level = _stochastic_round(scaled, generator).clamp_(max=self.levels)
        codes = 2 * level.to(torch.uint8) + (flat < 0).to(torch.uint8)
        return torch.cat([_as_bytes(norm.reshape(1)), pack_bits(codes, self.bits)])

    def _decode(self, wire: torch.Tensor, d: int, generator: _OptGen) -> torch.Tensor:
        norm = _from_bytes(wire[:4], torch.float32)
        codes = unpack_bits(wire[4:], self.bits, d)
        sign = 1 - 2 * (codes & 1).to(torch.float32)
        level = (codes >> 1).to(torch.float32)
        return sign * level * norm / self.levels


@dataclass(frozen=True, repr=False)
class Moniqua(Codec):
    """Moniqua's b-bit quantiser (Lu & De Sa, 2020) for values already in [-1/2, 1/2].

    The algorithm itself applies the centred modulo and the scaling by B; this
    codec only quantises.  Levels are the 2^b points ``-1/2 + k*delta`` with
    ``delta = 1/(2^b - 1)``; each entry is stochastically rounded to one of its
    two neighbouring levels (unbiased, error below delta) and sent as its b-bit
    index k.  Inputs outside [-1/2, 1/2] are clamped first (so they are biased).

    Wire: the indices packed by :func:`pack_bits`, ceil(d*b/8) bytes, no scale.
    Encode computes ``x*n + n/2`` and decode ``(2k - n) / (2n)`` (n = 2^b - 1),
    a pairing under which every decoded level re-encodes exactly in fp32.
    """

    bits: int
    name: ClassVar[str] = "moniqua"
    encode_needs_generator: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_int("bits", self.bits, 1, 8)

    @property
    def delta(self) -> float:
        """Spacing between neighbouring levels."""
        return 1 / (2**self.bits - 1)

    def wire_bytes(self, numel: int) -> int:
        return _packed_bytes(numel, self.bits)

    def _encode(self, flat: torch.Tensor, generator: _OptGen) -> torch.Tensor:
        n = 2**self.bits - 1
        scaled = flat.clamp(-0.5, 0.5) * n + n / 2
        return pack_bits(_stochastic_round(scaled, generator), self.bits)

    def _decode(self, wire: torch.Tensor, d: int, generator: _OptGen) -> torch.Tensor:
        n = 2**self.bits - 1
        k = unpack_bits(wire, self.bits, d).to(torch.float32)
        return (2 * k - n) / (2 * n)


CODECS: dict[str, type[Codec]] = {
    cls.name: cls for cls in (Identity, TopK, RandomK, SignNorm, QSGD, Moniqua)
}


def build(name: str, **options: object) -> Codec:
    """Create the codec registered as ``name`` with keyword ``options``.

    Raises ValueError for an unknown name, an unknown or missing option, or an
    out-of-range value, naming what is allowed.
    """
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose from {sorted(CODECS)}")
    cls = CODECS[name]
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for codec {name!r}; allowed: {allowed}")
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in options]
    if missing:
        raise ValueError(f"codec {name!r} needs option(s) {missing}; allowed: {allowed}")
    return cls(**options)
