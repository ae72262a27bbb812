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

All work is vectorised torch and runs unchanged on whatever device the input lives on.
"""

from __future__ import annotations

import functools
import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

import torch

from gossip.registry import ConfigError, Registry, check_keywords, keywords_field, option

__all__ = [
    "CODECS",
    "CodecConfig",
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
# Bit packing
#
# Eight b-bit codes are exactly b bytes, so packing works on int64 "lanes" of
# eight codes (one per byte): mask-and-shift steps merge neighbouring groups of
# codes until the lane's low b bytes hold its eight codes as a little-endian
# stream.  Unpacking runs the steps backwards.  Only the last lane can be
# partial; it is zero-padded.
# --------------------------------------------------------------------------- #
def _packed_bytes(count: int, bits: int) -> int:
    """Bytes needed for ``count`` codes of ``bits`` bits each."""
    return (count * bits + 7) // 8


def _lanes(count: int) -> int:
    """Number of 8-code lanes holding ``count`` codes."""
    return (count + 7) // 8


def _field_mask(width: int, period: int) -> int:
    """An int64 mask selecting the low ``width`` bits of every ``period``-bit field."""
    return sum(((1 << width) - 1) << start for start in range(0, 64, period))


#: Multiplier that gathers bit 0 of each byte of a lane into its top byte: byte i
#: times 2^(7j+7) lands on bit 8i+7j+7, which is 56+i for j = 7-i; no two (i, j)
#: share a bit, so there are no carries (products above bit 63 wrap away).
_BIT_GATHER = 0x0102040810204080


def _code_buffer(count: int, device: torch.device) -> torch.Tensor:
    """A uint8 buffer for ``count`` codes, zero-padded to whole lanes (codes go in ``[:count]``)."""
    buffer = torch.empty(8 * _lanes(count), dtype=torch.uint8, device=device)
    buffer[count:].zero_()
    return buffer


def _regroup(words: torch.Tensor, shifted: torch.Tensor, keep: int, move: int, bits: int) -> None:
    """``words := (words & keep) | (shifted & move)``, in place.  For ``bits <= 4`` the fields
    are far enough apart that neither operand has stray bits in the other's fields, and one
    mask after the OR does."""
    if 2 * bits <= 8:
        words.bitwise_or_(shifted).bitwise_and_(keep | move)
    else:
        words.bitwise_and_(keep).bitwise_or_(shifted.bitwise_and_(move))


def _packed_columns(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a lane-padded code buffer (modified in place): a (lanes, bits) uint8 view whose
    rows are the packed bytes of each lane.  Codes must be below ``2**bits``."""
    lanes = codes.view(torch.int64)
    if bits == 8:
        return codes.view(-1, 8)
    if bits == 1:
        return (lanes * _BIT_GATHER).view(torch.uint8).view(-1, 8)[:, 7:]
    for group in (1, 2, 4):  # pairs of groups of `group` codes, 8*group bits apart, close up
        low = _field_mask(group * bits, 16 * group)
        _regroup(lanes, lanes >> (group * (8 - bits)), low, low << (group * bits), bits)
    return codes.view(-1, 8)[:, :bits]


def _pack_into(codes: torch.Tensor, bits: int, count: int, out: torch.Tensor) -> None:
    """Write the first ``count`` codes of lane-padded buffer ``codes`` (clobbered) into ``out``
    (``_packed_bytes(count, bits)`` bytes) as the stream :func:`pack_bits` documents."""
    columns = _packed_columns(codes, bits)
    full = count // 8
    out[: full * bits].view(full, bits).copy_(columns[:full])
    rest = out.numel() - full * bits
    if rest:
        out[full * bits :].copy_(columns[full, :rest])


#: Elements per chunk of the multi-pass encoders (a multiple of 8): a chunk's temporaries stay
#: in cache and are recycled by the allocator instead of page-faulting fresh memory per call.
_CHUNK = 2**18


def _encode_chunks(
    flat: torch.Tensor, bits: int, out: torch.Tensor, fill: Callable[[torch.Tensor, torch.Tensor], None]
) -> None:
    """Pack the codes of ``flat`` into ``out`` chunk by chunk, in order; ``fill(chunk, codes)``
    writes the uint8 codes of the chunk ``flat[start:start + len(chunk)]`` into ``codes``.  Chunks start on whole
    bytes of ``out``."""
    d = flat.numel()
    for start in range(0, d, _CHUNK):
        count = min(_CHUNK, d - start)
        codes = _code_buffer(count, flat.device)
        fill(flat[start : start + count], codes[:count])
        first = start * bits // 8
        _pack_into(codes, bits, count, out[first : first + _packed_bytes(count, bits)])


def _unpacked_codes(wire: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The codes of a packed stream, one per byte, in a lane-padded buffer (valid up to ``count``)."""
    full = count // 8
    lanes = torch.zeros(_lanes(count), 8, dtype=torch.uint8, device=wire.device)
    lanes[:full, :bits] = wire[: full * bits].view(full, bits)
    rest = wire.numel() - full * bits
    if rest:
        lanes[full, :rest] = wire[full * bits :]
    words = lanes.view(torch.int64)
    for group in (4, 2, 1):  # the upper half of each group of 2*group codes moves 8*group bits up
        low = _field_mask(group * bits, 16 * group)
        _regroup(words, words << (group * (8 - bits)), low, low << (8 * group), bits)
    return lanes.view(-1)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``bits``-bit integer codes into a 1-D uint8 tensor of ``ceil(n*bits/8)`` bytes.

    Bit order is little-endian (see the module docstring); only the low ``bits``
    bits of each code are kept.  Used by every codec that sends sub-byte codes.
    """
    _check_int("bits", bits, 1, 8)
    codes = codes.reshape(-1)
    count = codes.numel()
    buffer = _code_buffer(count, codes.device)
    buffer[:count].copy_(codes).bitwise_and_(2**bits - 1)
    out = torch.empty(_packed_bytes(count, bits), dtype=torch.uint8, device=codes.device)
    _pack_into(buffer, bits, count, out)
    return out


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
    if bits == 8:
        return wire.clone()
    return _unpacked_codes(wire, bits, count)[:count]


# --------------------------------------------------------------------------- #
# Decoding through lookup tables
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=None)
def _byte_codes(bits: int, device: torch.device) -> torch.Tensor:
    """(256, 8 // bits) int64: the codes each byte value holds, in stream order (bits divides 8)."""
    byte = torch.arange(256, device=device).unsqueeze(1)
    return (byte >> torch.arange(0, 8, bits, device=device)) & (2**bits - 1)


#: Dtypes that copy 1, 2 or 4 fp32 values as one element (finite fp32 never form a wide NaN).
_WIDE = {1: torch.float32, 2: torch.int64, 4: torch.complex128}


def _lookup_rows(table: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` (contiguous fp32, ``len(index) * e`` values) := rows ``table[index]`` of the (256, e)
    table, gathering several fp32 at a time through a wider dtype where ``out`` is aligned for it."""
    per_row = table.shape[1]
    unit = next(u for u in (4, 2, 1) if per_row % u == 0 and out.storage_offset() % u == 0)
    wide = _WIDE[unit]
    rows = out.view(wide).view(-1, per_row // unit)
    torch.index_select(table.view(wide), 0, index.to(torch.int32), out=rows)


def _decode_codes(
    wire: torch.Tensor, bits: int, base: torch.Tensor, scaled: bool, divisor: float, out: torch.Tensor
) -> None:
    """``out[i] = base[c] * scale / divisor`` (in that order, fp32) for the codes ``c`` packed in
    ``wire``: after the wire's leading fp32 ``scale`` when ``scaled``, else with ``scale`` 1.  One
    table lookup per byte when ``bits`` divides 8, else unpack first and look up per code."""
    if scaled:
        base, wire = base * _from_bytes(wire[:4], torch.float32), wire[4:]
    values = base / divisor
    count = out.numel()
    if 8 % bits:
        codes = _unpacked_codes(wire, bits, count)[:count]
        torch.index_select(values, 0, codes.to(torch.int32), out=out)
        return
    per_byte = 8 // bits
    table = values[_byte_codes(bits, values.device)]
    full = count // per_byte
    _lookup_rows(table, wire[:full], out[: full * per_byte])
    if full * per_byte < count:
        out[full * per_byte :].copy_(table[wire[full].long(), : count - full * per_byte])


@functools.lru_cache(maxsize=None)
def _sign_levels(device: torch.device) -> torch.Tensor:
    """SignNorm's decode table before scaling: code 0 (negative) is -1, code 1 is +1."""
    return torch.tensor([-1.0, 1.0], device=device)


@functools.lru_cache(maxsize=None)
def _signed_levels(bits: int, device: torch.device) -> torch.Tensor:
    """QSGD's decode table before scaling: code ``2 * level + negative`` is ``±level`` (fp32)."""
    codes = torch.arange(2**bits, device=device)
    return ((1 - 2 * (codes & 1)) * (codes >> 1)).to(torch.float32)


@functools.lru_cache(maxsize=None)
def _moniqua_levels(bits: int, device: torch.device) -> torch.Tensor:
    """Moniqua's decode table times ``2n``: index ``k`` is ``2k - n`` (``n = 2^bits - 1``)."""
    n = 2**bits - 1
    return 2 * torch.arange(n + 1, dtype=torch.float32, device=device) - n


# --------------------------------------------------------------------------- #
# Byte helpers and randomness
# --------------------------------------------------------------------------- #
def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """Reinterpret a 1-D contiguous tensor as its raw bytes (no copy)."""
    return t.contiguous().view(torch.uint8)


def _flat_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a contiguous 1-D fp32 tensor without autograd history: ``x`` itself when it already
    is one (each view op costs microseconds, a large share of a small message's encode)."""
    if x.requires_grad:
        x = x.detach()
    if x.dim() != 1:
        x = x.reshape(-1)
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    return x.contiguous()


def _from_bytes(wire: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret raw bytes as ``dtype``: a view when ``wire`` is aligned for it, else a copy.
    Callers consume the result before returning, so a view never escapes."""
    if wire.storage_offset() % dtype.itemsize:
        wire = wire.clone()
    return wire.view(dtype)


#: Stochastic rounding works in fixed point with this many steps per unit.
_ROUNDING_STEPS = 2**16

def _rounding_noise(generator: torch.Generator, count: int, device: torch.device) -> torch.Tensor:
    """``count`` uniform int32 draws in ``[0, 2^16)`` from ``generator``, on ``device``: the noise
    that stochastic rounding adds to values in fixed point."""
    noise = torch.randint(0, _ROUNDING_STEPS, (count,), generator=generator, dtype=torch.int32,
                          device=generator.device)
    return noise.to(device)


def _stochastic_round_into(fixed: torch.Tensor, noise: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` (uint8) := each value of ``fixed / 2**16`` rounded down, or up with probability
    equal to its fractional part at 2^-16 resolution, given uniform int32 ``noise`` in [0, 2^16).

    ``fixed`` holds values already multiplied by ``_ROUNDING_STEPS``, in [0, 256 * 2^16).  Adding a
    uniform integer in [0, 2^16) and dropping the low 16 bits rounds up with probability
    floor(frac * 2^16) / 2^16: biased by less than 2^-16 of a level, and exact on integers.
    """
    steps = fixed.to(torch.int32)  # truncation is floor: values are non-negative
    steps.add_(noise)
    out.copy_(steps.view(torch.uint8)[2::4])  # bits 16..23 (little-endian): the rounded value


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
# Selection helpers
# --------------------------------------------------------------------------- #
#: The top-k fast path's sample size is kept between these; it needs d >= 4x the largest.
_TOPK_SAMPLE_SIZES = (2**12, 2**14)
#: The sample is taken in runs of this many consecutive entries (one 64-byte cache line of fp32),
#: so that it reads a sixteenth of the cache lines a sample of single entries would.
_TOPK_RUN = 16


def _magnitude_keys(x: torch.Tensor) -> torch.Tensor:
    """The bits of ``|x|`` (fp32) as int32: ordered as the magnitudes, NaN above infinity."""
    return x.view(torch.int32) & 0x7FFFFFFF


def _largest_k(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Positions, ascending, of the ``k`` largest of int32 ``keys``, ties to the lower position."""
    kth = torch.topk(keys, k, sorted=False).values.min()
    above = torch.gt(keys, kth)
    ties = torch.eq(keys, kth).nonzero().squeeze(1)[: k - int(above.sum())]
    return torch.sort(torch.cat([above.nonzero().squeeze(1), ties])).values


def _topk_sample(flat: torch.Tensor, period: int, run: int) -> torch.Tensor:
    """The entries of ``flat`` whose index ``i`` has ``i % period < run``: runs of ``run``
    consecutive entries, one at the start of every ``period``."""
    whole = flat.numel() // period * period
    runs = flat[:whole].view(-1, period)[:, :run].reshape(-1)
    return torch.cat([runs, flat[whole : whole + run]])


def _topk_entries(flat: torch.Tensor, k: int, indices_out: torch.Tensor | None = None,
                  values_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (ascending) and values of the ``k`` largest-magnitude entries of fp32 ``flat``
    (NaN counting as largest), ties to the lower index: written into ``indices_out`` (int32) and
    ``values_out`` when given (for example the two halves of a message), else into new tensors.

    For large inputs with small k, a threshold no larger than the k-th largest magnitude is
    estimated from a sample (:func:`_topk_sample`), and the selection runs only on the entries not
    below it, found chunk by chunk so that no |x| of the whole tensor is allocated.  Too few candidates means the estimate was too high: the selection runs on all
    entries.  The sample only decides how much work the selection does, never what it selects.
    """
    d = flat.numel()
    if indices_out is None or values_out is None:
        indices_out = torch.empty(k, dtype=torch.int32, device=flat.device)
        values_out = torch.empty(k, dtype=flat.dtype, device=flat.device)
    indices = None
    if d >= 4 * _TOPK_SAMPLE_SIZES[1] and 16 * k <= d:
        # the selections read about S + k + 4 sqrt(k d / S) + 4 d / S keys (sample and candidates): least near
        # S = (2 sqrt(k d))^(2/3)
        size = min(max(round((2 * math.sqrt(k * d)) ** (2 / 3)), _TOPK_SAMPLE_SIZES[0]), _TOPK_SAMPLE_SIZES[1])
        period = _TOPK_RUN * (d // size)
        samples = d // period * _TOPK_RUN + min(_TOPK_RUN, d % period)
        expected = k * samples / d
        rank = min(samples, math.ceil(expected + 4 * math.sqrt(expected) + 4))
        sample = _topk_sample(flat, period, _TOPK_RUN)
        threshold = int(torch.topk(_magnitude_keys(sample), rank, sorted=False).values.min())
        candidates = torch.cat([
            torch.ge(_magnitude_keys(flat[start : start + _CHUNK]), threshold).nonzero().squeeze(1) + start
            for start in range(0, d, _CHUNK)
        ])
        if candidates.numel() >= k:
            indices = candidates[_largest_k(_magnitude_keys(torch.index_select(flat, 0, candidates)), k)]
    if indices is None:
        indices = _largest_k(_magnitude_keys(flat), k)
    indices_out.copy_(indices)
    torch.index_select(flat, 0, indices, out=values_out)
    return indices_out, values_out


def _distinct_draws(d: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k <= d`` distinct indices below ``d``, ascending, uniformly at random, in O(k log k), on
    the generator's device.

    Takes the distinct ones of i.i.d. uniform draws from ``generator``, each round drawing exactly
    as many as are missing, so the result is the set of the first k distinct values of an i.i.d.
    stream: a uniform k-subset.
    """
    chosen = torch.empty(0, dtype=torch.int64, device=generator.device)
    while chosen.numel() < k:
        draws = torch.randint(0, d, (k - chosen.numel(),), generator=generator, device=generator.device)
        chosen = torch.unique(torch.cat([chosen, draws]))
    return chosen


# --------------------------------------------------------------------------- #
# Codecs
# --------------------------------------------------------------------------- #
class Codec(ABC):
    """A fixed-size message codec.

    Subclasses are frozen dataclasses whose fields are exactly the options that
    :func:`build` accepts; they implement ``wire_bytes``, ``_encode`` and
    ``_decode``, while this class does the shared input checks and allocates
    outputs that the caller did not supply.  Tensors must be non-empty.
    """

    name: ClassVar[str]
    encode_needs_generator: ClassVar[bool] = False
    decode_needs_generator: ClassVar[bool] = False

    @abstractmethod
    def wire_bytes(self, numel: int) -> int:
        """Exact length of ``encode``'s output for a tensor of ``numel`` elements."""

    @abstractmethod
    def _encode(self, flat: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        """Encode a contiguous 1-D fp32 tensor into ``out`` (uint8, ``wire_bytes`` long)."""

    @abstractmethod
    def _decode(self, wire: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        """Decode ``wire`` (already on ``out``'s device) into contiguous 1-D fp32 ``out``."""

    def encode(
        self, x: torch.Tensor, generator: torch.Generator | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode float tensor ``x`` (any shape, read flattened) into a 1-D uint8 tensor of
        ``wire_bytes(x.numel())`` bytes on ``x``'s device and return it.

        ``out``, when given, is that tensor: written in place (e.g. a slice of a larger send
        buffer), which spares allocating, and page-faulting, a fresh one per call.
        """
        if not x.is_floating_point() or x.numel() == 0:
            raise ValueError(
                f"{self.name} codec encodes non-empty float tensors, got {x.dtype} {tuple(x.shape)}"
            )
        self._check_generator(generator, self.encode_needs_generator, "encode")
        shape = (self.wire_bytes(x.numel()),)
        wire = self._output(out, shape, torch.uint8, x.device, "wire")
        self._encode(_flat_fp32(x), generator, wire)
        return wire

    def decode(
        self,
        wire: torch.Tensor,
        like: torch.Tensor,
        generator: torch.Generator | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode ``wire`` into a new tensor with ``like``'s shape, dtype and device.

        ``out``, when given, must be a contiguous fp32 tensor with ``like``'s shape on its device;
        it is written in place and returned (``like`` may be ``out`` itself).
        """
        if like.numel() == 0:
            raise ValueError(f"{self.name} codec cannot decode into an empty tensor")
        expected = self.wire_bytes(like.numel())
        if wire.dtype != torch.uint8 or wire.dim() != 1 or wire.numel() != expected:
            raise ValueError(
                f"{self.name} codec expects a 1-D uint8 wire of {expected} bytes for "
                f"{like.numel()} elements, got {wire.dtype} of shape {tuple(wire.shape)}"
            )
        self._check_generator(generator, self.decode_needs_generator, "decode")
        target = self._output(out, tuple(like.shape), torch.float32, like.device, "decoded")
        if wire.device != like.device:
            wire = wire.to(like.device)
        self._decode(wire, generator, target if target.dim() == 1 else target.view(-1))
        return target if out is not None else target.to(like.dtype)

    def _output(
        self, out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, what: str
    ) -> torch.Tensor:
        """``out`` after checking that it fits, or a fresh tensor when it is None."""
        if out is None:
            return torch.empty(shape, dtype=dtype, device=device)
        if out.dtype != dtype or tuple(out.shape) != shape or out.device != device or not out.is_contiguous():
            raise ValueError(
                f"{self.name} codec: out for the {what} must be a contiguous {dtype} tensor of shape "
                f"{shape} on {device}, got {'a non-contiguous ' if not out.is_contiguous() else ''}"
                f"{out.dtype} of shape {tuple(out.shape)} on {out.device}"
            )
        return out

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

    def _encode(self, flat: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        out.copy_(_as_bytes(flat))

    def _decode(self, wire: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        out.view(torch.uint8).copy_(wire)


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

    Wire: k fp32 values, then their k int32 flat indices (8k bytes), ascending.
    The selection is torch.topk's of ``|x|`` with NaN counting as largest and
    ties going to the lower index, found on a thresholded subset when k is small
    (see ``_topk_entries``).  Decode scatters the values into zeros (in one pass
    with the zero fill when the indices are ascending, as this encoder sends them).
    """

    name: ClassVar[str] = "topk"

    def wire_bytes(self, numel: int) -> int:
        return 8 * self.k_for(numel)

    def _encode(self, flat: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        if flat.numel() > _INT32_MAX:
            raise ValueError(f"topk indices are int32; {flat.numel()} elements is too many")
        k = self.k_for(flat.numel())
        if out.storage_offset() % 4 == 0:  # the selection is written straight into the message
            _topk_entries(flat, k, out[4 * k :].view(torch.int32), out[: 4 * k].view(torch.float32))
        else:
            indices, values = _topk_entries(flat, k)
            out[: 4 * k].copy_(_as_bytes(values))
            out[4 * k :].copy_(_as_bytes(indices))

    def _decode(self, wire: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        k = self.k_for(out.numel())
        values = _from_bytes(wire[: 4 * k], torch.float32)
        indices = _from_bytes(wire[4 * k :], torch.int32)
        out.zero_().scatter_(0, indices.long(), values)


@dataclass(frozen=True, repr=False)
class RandomK(Sparsifier):
    """Sends k entries at indices drawn from a shared generator.

    Wire: the k fp32 values only (4k bytes), in the order of the indices, which
    the receiver rebuilds from an identically seeded generator passed to
    ``decode``.  The indices are a uniform k-subset: for k <= d/4 the distinct
    values of i.i.d. draws from the generator, ascending (see ``_distinct_draws``, O(k log k)); otherwise the first k of
    ``torch.randperm(d)`` (O(d)), drawn on the generator's device.  With
    ``rescale`` decode multiplies by d/k, making the estimate unbiased.
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

    def _chosen(self, d: int, generator: torch.Generator) -> torch.Tensor:
        """The chosen indices of a message of ``d`` entries, on the generator's device."""
        k = self.k_for(d)
        if 4 * k > d:
            return torch.randperm(d, generator=generator, device=generator.device)[:k]
        return _distinct_draws(d, k, generator)

    def _encode(self, flat: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        values = torch.index_select(flat, 0, self._chosen(flat.numel(), generator).to(flat.device))
        out.copy_(_as_bytes(values))

    def _decode(self, wire: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        d = out.numel()
        values = _from_bytes(wire, torch.float32)
        if self.rescale:
            values = values * (d / self.k_for(d))
        out.zero_().scatter_(0, self._chosen(d, generator).to(out.device), values)


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

    def _encode(self, flat: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        # ||x||_1 accumulates in float64
        norms = []

        def fill(chunk: torch.Tensor, codes: torch.Tensor) -> None:
            norms.append(chunk.abs().sum(dtype=torch.float64))
            torch.ge(chunk, 0, out=codes.view(torch.bool))

        _encode_chunks(flat, 1, out[4:], fill)
        scale = torch.stack(norms).sum().div_(flat.numel())
        out[:4].copy_(_as_bytes(scale.to(torch.float32).reshape(1)))

    def _decode(self, wire: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        _decode_codes(wire, 1, _sign_levels(out.device), True, 1.0, out)


@dataclass(frozen=True, repr=False)
class QSGD(Codec):
    """QSGD (Alistarh et al., 2017) with ``levels`` = s levels and stochastic rounding.

    Encode: ``level = |x| * (s / ||x||_2)`` (the factor rounded to fp32) rounded
    stochastically (P(up) is the fractional part at 2^-16 resolution: bias below
    2^-16 of a level, exact when already an integer), clamped to s against float
    error.  Decode:
    ``sign * level * ||x||_2 / s``; a zero norm gives all zeros.

    Wire: fp32 ``||x||_2`` (the square root of a float64 sum of squares), then
    per entry a code ``2 * level + (x < 0)`` of b = ceil(log2(s+1)) + 1 bits
    packed by :func:`pack_bits`: 4 + ceil(d*b/8) bytes.  ``levels`` is limited
    to 1..127 so that b <= 8.
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

    def _encode(self, flat: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        # ||x||_2 from a float64 sum of squares
        top = self.levels * _ROUNDING_STEPS
        chunks = (flat[start : start + _CHUNK] for start in range(0, flat.numel(), _CHUNK))
        squares = sum(chunk.to(torch.float64).square_().sum() for chunk in chunks)
        norm = torch.as_tensor(squares, dtype=torch.float64, device=flat.device).sqrt().to(torch.float32)
        out[:4].copy_(_as_bytes(norm.reshape(1)))
        # 2^16 s / norm; 0 for a zero norm (x == 0: levels 0); finite even for a subnormal norm
        factor = torch.where(norm > 0, top / norm, 0.0).clamp_(max=torch.finfo(torch.float32).max)

        def fill(chunk: torch.Tensor, codes: torch.Tensor) -> None:
            fixed = chunk.abs().mul_(factor).clamp_(max=top)
            _stochastic_round_into(fixed, _rounding_noise(generator, chunk.numel(), chunk.device), codes)
            codes.mul_(2).add_(torch.lt(chunk, 0))

        _encode_chunks(flat, self.bits, out[4:], fill)

    def _decode(self, wire: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        _decode_codes(wire, self.bits, _signed_levels(self.bits, out.device), True, self.levels, out)


@dataclass(frozen=True, repr=False)
class Moniqua(Codec):
    """Moniqua's b-bit quantiser (Lu & De Sa, 2020) for values already in [-1/2, 1/2].

    The algorithm itself applies the centred modulo and the scaling by B; this
    codec only quantises.  Levels are the 2^b points ``-1/2 + k*delta`` with
    ``delta = 1/(2^b - 1)``; each entry is stochastically rounded to one of its
    two neighbouring levels (unbiased up to 2^-16 of delta, error below delta)
    and sent as its b-bit index k.  Inputs outside [-1/2, 1/2] are clamped first
    (so they are biased).

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

    def _encode(self, flat: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        # 2^16 (x*n + n/2), exactly: scaling by a power of two commutes with rounding
        scale, offset = (2**self.bits - 1) * _ROUNDING_STEPS, (2**self.bits - 1) * _ROUNDING_STEPS // 2

        def fill(chunk: torch.Tensor, codes: torch.Tensor) -> None:
            fixed = chunk.clamp(-0.5, 0.5).mul_(scale).add_(offset)
            _stochastic_round_into(fixed, _rounding_noise(generator, chunk.numel(), chunk.device), codes)

        _encode_chunks(flat, self.bits, out, fill)

    def _decode(self, wire: torch.Tensor, generator: _OptGen, out: torch.Tensor) -> None:
        _decode_codes(wire, self.bits, _moniqua_levels(self.bits, out.device), False, 2 * (2**self.bits - 1), out)


#: The codecs that a config's ``codec`` section names: the built-ins below, or ``module.path:Class``
#: for a subclass of :class:`Codec` of your own (Moniqua's modulo codec is its algorithm's own).
CODECS = Registry("codec", Codec)
for _codec in (Identity, TopK, RandomK, SignNorm, QSGD):
    CODECS.register(_codec.name, _codec)


@dataclass
class CodecConfig:
    """A ``codec`` section: ``{name: topk, fraction: 0.01}``, or just ``sign`` for ``{name: sign}``.
    Its other keys are the codec's own (its dataclass fields)."""

    name: str = option("sign", help="identity | topk | randomk | sign | qsgd, or module.path:Class (a "
                                    "gossip.algorithms.compression.Codec); applied per parameter tensor")
    options: dict[str, Any] = keywords_field(help="the codec's own keys: topk and randomk fraction (of each "
                                                  "tensor's entries, at least one); randomk rescale (by d/k, "
                                                  "unbiased); qsgd levels (1..127)")

    def check_keywords(self, path: str, parse_dataclass: Any = None) -> None:
        """The keys must be the codec's own, of its types and in its bounds (one line naming the key)."""
        self.build(path)

    def build(self, path: str = "codec.") -> Codec:
        """The codec, its keys checked first: a :class:`ConfigError` at ``path`` naming what is wrong."""
        cls = CODECS.implementation(self.name, f"{path}name")
        check_keywords(cls, self, path)
        try:
            return cls(**self.options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path.rstrip('.')}: {' '.join(str(exc).split())}") from None


def build(name: str, **options: Any) -> Codec:
    """The codec registered as ``name`` with keyword ``options``, checked as a config's ``codec``
    section is: a :class:`ConfigError` (a ValueError) naming what is wrong and what is allowed.

    >>> build("topk", fraction=0.25)
    TopK(fraction=0.25)
    """
    return CodecConfig(name, dict(options)).build()
