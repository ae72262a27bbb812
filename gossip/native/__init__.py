"""Fused CPU kernels for the message codecs and PowerGossip's sweep, compiled on first use.

The codecs in :mod:`gossip.compression` are written in torch ops, which on a CPU means several
passes over memory per encode; PowerGossip's round (:func:`gossip.edge.sweep`) is a handful of
small matrix products per matrix.  When a C compiler is present, this module builds ``codecs.c``
and ``sweep.c`` once per source version and instruction set into a cache folder (with OpenMP where
the compiler has it, so that the kernels share torch's thread pool), and the callers use its fused
kernels on contiguous CPU tensors instead: the codecs get the same bytes, the sweep the same
products up to float rounding (tests compare both paths).  Without a compiler, or with
``GOSSIP_NATIVE=0`` in the environment, everything runs on the torch path.

Environment:

* ``GOSSIP_NATIVE=0`` turns the kernels off;
* ``CC`` names the compiler (default ``cc``);
* ``GOSSIP_CACHE_DIR`` is where the built library goes (default ``$XDG_CACHE_HOME/gossip`` or
  ``~/.cache/gossip``).

Every source change builds one more library; a build removes the folder's other libraries (and
left-over partial builds) that no process has loaded for ``STALE_DAYS`` days, so the folder does
not grow without bound.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

__all__ = [
    "MONIQUA",
    "QSGD",
    "SIGN",
    "available",
    "bitmap_gather",
    "bitmap_scatter",
    "build",
    "cpu_isa",
    "lookup_decode",
    "normalize",
    "quantize_pack",
    "randomk_bitmap",
    "round_matrices",
    "sample_threshold",
    "sparse_scatter",
    "sweep",
    "sweep_round",
    "topk_select",
    "usable",
]

#: The library's C sources, and the header they share (part of the cache key).
SOURCES = tuple(Path(__file__).with_name(name) for name in ("codecs.c", "sweep.c"))
HEADERS = (Path(__file__).with_name("parallel.h"),)
#: No fast-math and no contraction into fused multiply-adds: the kernels must round exactly as
#: the torch ops they replace, whatever the vector width.
FLAGS = ("-O3", "-shared", "-fPIC", "-pthread", "-ffp-contract=off", "-fno-fast-math")
#: Threads from OpenMP: the loader gives the library the libgomp torch already loaded, so the kernels
#: run on torch's thread pool instead of competing with its spinning threads (tried first).
OPENMP = ("-fopenmp",)
#: Extra flags per instruction set, named as torch.backends.cpu.get_cpu_capability() names them
#: (lower case).  A library is built for the set this CPU has, never with -march=native, so a
#: cache folder shared by a cluster holds one library per set and each CPU loads one it can run.
ISA_FLAGS = {
    "default": (),
    "avx2": ("-mavx2", "-mbmi", "-mbmi2", "-mpopcnt"),
    "avx512": ("-mavx2", "-mbmi", "-mbmi2", "-mpopcnt", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl"),
}
#: A cached library unused for this many days is removed by the next build in its folder (loading
#: a library refreshes its modification time, so a library in use is never removed).
STALE_DAYS = 30
SIGN, QSGD, MONIQUA = 0, 1, 2  # the kinds of gossip_quantize_pack

_i64, _u64, _int, _f32, _ptr = ctypes.c_int64, ctypes.c_uint64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
_SIGNATURES = {
    "gossip_quantize_pack": (_int, [_ptr, _i64, _int, _int, _int, _u64, _ptr, _int]),
    "gossip_lookup_decode": (None, [_ptr, _i64, _int, _ptr, _int, _f32, _ptr, _int]),
    "gossip_sample_threshold": (ctypes.c_uint32, [_ptr, _i64, _i64, _i64, _i64]),
    "gossip_topk_select": (_i64, [_ptr, _i64, ctypes.c_uint32, _i64, _ptr, _ptr, _i64, _ptr, _ptr, _int]),
    "gossip_sparse_scatter": (_int, [_ptr, _ptr, _i64, _i64, _ptr, _int]),
    "gossip_randomk_bitmap": (_i64, [_u64, _i64, _i64, _ptr]),
    "gossip_bitmap_gather": (None, [_ptr, _ptr, _i64, _ptr, _int]),
    "gossip_bitmap_scatter": (None, [_ptr, _ptr, _i64, _ptr, _int]),
    "gossip_sweep": (_int, [_ptr, _i64, _i64, _ptr, _i64, _i64, _ptr, _i64, _i64, _int, _ptr, _i64, _i64, _i64, _ptr,
                            _i64, _int]),
    "gossip_round": (_int, [_ptr, _i64, _i64, _ptr, _i64, _ptr, _i64, _int, _ptr, _i64, _ptr, _i64, _int]),
    "gossip_normalize": (None, [_ptr, _ptr, _i64, _i64, _ptr, _ptr, _i64]),
}


def _cache_dir() -> Path:
    if os.environ.get("GOSSIP_CACHE_DIR"):
        return Path(os.environ["GOSSIP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gossip"


def cpu_isa() -> str:
    """The instruction set of ``ISA_FLAGS`` this CPU runs (torch's CPU capability; else "default")."""
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return capability if capability in ISA_FLAGS else "default"


def build(compiler: str | None = None, cache_dir: Path | None = None, isa: str | None = None) -> Path:
    """Compile the C sources for ``isa`` (default: this CPU's) into the cache folder, once per
    source, flags and compiler, and return the library's path: with OpenMP where the compiler
    has it, else with POSIX threads.  Raises RuntimeError with the compiler's message when both
    fail."""
    compiler = compiler or os.environ.get("CC") or "cc"
    isa = isa or cpu_isa()
    folder = cache_dir or _cache_dir()
    try:
        return _compile(compiler, (*FLAGS, *ISA_FLAGS[isa], *OPENMP), folder, isa)
    except RuntimeError:
        return _compile(compiler, (*FLAGS, *ISA_FLAGS[isa]), folder, isa)


def _compile(compiler: str, flags: tuple[str, ...], folder: Path, isa: str) -> Path:
    """The library built from the C sources with ``flags``, compiled unless cached."""
    source = b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS))
    key = hashlib.sha256(source + repr((flags, compiler, sys.platform)).encode()).hexdigest()[:16]
    library = folder / f"gossip-kernels-{isa}-{key}.so"
    if library.exists():
        _mark_used(library)
        return library
    folder.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed, so that concurrent processes never load half a file.
    handle, partial = tempfile.mkstemp(dir=folder, prefix=library.stem, suffix=".so.partial")
    os.close(handle)
    command = [*shlex.split(compiler), *flags, "-o", partial, *map(str, SOURCES), "-lm"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()
            raise RuntimeError(f"{shlex.join(command)} failed: {errors[:1]}")
        os.replace(partial, library)
        _prune(folder, time.time() - STALE_DAYS * 86400)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RuntimeError(f"cannot run the C compiler {compiler!r}: {error}") from error
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return library


def _mark_used(library: Path) -> None:
    """Refresh ``library``'s modification time (its last use), where the folder lets us."""
    try:
        os.utime(library)
    except OSError:
        pass  # a read-only shared cache: nothing is pruned there either


def _prune(folder: Path, unused_since: float) -> None:
    """Remove the libraries and partial builds in ``folder`` last used before ``unused_since``
    (seconds since the epoch); one that another process removes first is skipped."""
    for path in folder.glob("gossip-kernels-*.so*"):
        try:
            if path.suffix in (".so", ".partial") and path.stat().st_mtime < unused_since:
                path.unlink()
        except OSError:
            continue


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    """The loaded kernels for this CPU, or None (turned off, or no compiler: warned once)."""
    if os.environ.get("GOSSIP_NATIVE", "1") == "0":
        return None
    return _load(cpu_isa())


@functools.lru_cache(maxsize=None)
def _load(isa: str) -> ctypes.CDLL | None:
    """The kernels built for ``isa``, or None (no compiler: warned once)."""
    try:
        return _open(build(isa=isa))
    except (RuntimeError, OSError) as error:
        warnings.warn(f"gossip: fused kernels unavailable, using torch ops ({error})", stacklevel=3)
        return None


def _open(path: Path) -> ctypes.CDLL:
    """The library at ``path``, its functions' signatures declared."""
    library = ctypes.CDLL(str(path))
    for name, (result, arguments) in _SIGNATURES.items():
        function = getattr(library, name)
        function.restype, function.argtypes = result, arguments
    return library


def available() -> bool:
    """Whether the compiled kernels are loaded (compiling them on the first call)."""
    return _library() is not None


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can run on these tensors: available, and all on the CPU and contiguous."""
    for tensor in tensors:
        if not (tensor.is_cpu and tensor.is_contiguous()):
            return False
    return available()


def _threads() -> int:
    return torch.get_num_threads()


def quantize_pack(x: torch.Tensor, kind: int, bits: int, levels: int, seed: int, wire: torch.Tensor) -> None:
    """Write the whole message of fp32 ``x`` into uint8 ``wire``, as the codec of ``kind`` does:

    * SIGN: fp32 ``||x||_1 / d``, then the 1-bit codes ``x >= 0``;
    * QSGD: fp32 ``||x||_2``, then the ``bits``-bit codes ``2 * round(min(|x| * f, t)) + (x < 0)``
      for ``t = levels * 2^16`` and ``f = t / ||x||_2`` (0 for a zero norm);
    * MONIQUA: the ``bits``-bit codes ``round(clamp(x, -1/2, 1/2) * n * 2^16 + n * 2^15)``, ``n = 2^bits - 1``.

    Rounding is stochastic in 2^-16 steps with the counter-based noise of ``seed`` (see
    ``compression._rounding_noise``); the norms accumulate in double.  Raises MemoryError, writing
    nothing, when the per-block sums (``d / 2^16`` doubles) cannot be allocated.
    """
    status = _library().gossip_quantize_pack(x.data_ptr(), x.numel(), kind, bits, levels, seed, wire.data_ptr(),
                                             _threads())
    if status != 0:
        raise MemoryError(f"gossip.native.quantize_pack: no memory for the block sums of {x.numel()} elements")


def lookup_decode(wire: torch.Tensor, bits: int, base: torch.Tensor, scaled: bool, divisor: float,
                  out: torch.Tensor) -> None:
    """``out[i] = base[c] * scale / divisor`` (fp32 operations) for the ``out.numel()`` packed
    ``bits``-bit codes ``c`` of ``wire``; with ``scaled`` the wire starts with the fp32 ``scale`` and
    the codes follow, else ``scale`` is 1.  ``base`` is a contiguous fp32 tensor of ``2**bits`` values."""
    _library().gossip_lookup_decode(wire.data_ptr(), out.numel(), bits, base.data_ptr(), scaled, divisor,
                                    out.data_ptr(), _threads())


def sample_threshold(x: torch.Tensor, period: int, run: int, rank: int) -> int:
    """The ``rank``-th largest magnitude key (``compression._magnitude_keys``) of the entries of ``x``
    whose index ``i`` has ``i % period < run`` (``compression._topk_sample``)."""
    return _library().gossip_sample_threshold(x.data_ptr(), x.numel(), period, run, rank)


def topk_select(x: torch.Tensor, threshold: int, k: int, capacity: int, out_indices: torch.Tensor,
                out_values: torch.Tensor) -> bool:
    """Write the indices (int32, ascending) and values of the ``k`` entries of fp32 ``x`` with the
    largest magnitude keys (``compression._magnitude_keys``), ties to the lower index, into the
    ``k``-element ``out_indices`` and ``out_values``, finding them among the candidates whose key is
    not below ``threshold``; False (nothing written) when fewer than ``k`` are.  ``capacity`` is a
    guess of the candidates' number."""
    indices, values = torch.empty(capacity, dtype=torch.int32), torch.empty(capacity)
    found = _library().gossip_topk_select(x.data_ptr(), x.numel(), threshold, k, indices.data_ptr(),
                                          values.data_ptr(), capacity, out_indices.data_ptr(),
                                          out_values.data_ptr(), _threads())
    if found > capacity:
        return topk_select(x, threshold, k, found, out_indices, out_values)
    return found >= k


def sparse_scatter(indices: torch.Tensor, values: torch.Tensor, out: torch.Tensor) -> bool:
    """``out`` (fp32) := zeros with ``values`` at int32 ``indices``; False, writing nothing, unless the
    indices are strictly ascending and in range."""
    return bool(_library().gossip_sparse_scatter(indices.data_ptr(), values.data_ptr(), indices.numel(),
                                                 out.numel(), out.data_ptr(), _threads()))


def randomk_bitmap(d: int, k: int, seed: int) -> torch.Tensor:
    """Random-k's index set as a bitmap (int64 words; bit i of word w is index 64w + i): the first
    ``k`` distinct of the draws ``compression._index_draws`` makes under ``seed`` (``k <= d``)."""
    bitmap = torch.zeros(-(-d // 64), dtype=torch.int64)
    _library().gossip_randomk_bitmap(seed, d, k, bitmap.data_ptr())
    return bitmap


def bitmap_gather(bitmap: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` (fp32) := the entries of ``x`` at the bitmap's indices, ascending."""
    _library().gossip_bitmap_gather(bitmap.data_ptr(), x.data_ptr(), x.numel(), out.data_ptr(), _threads())


def bitmap_scatter(bitmap: torch.Tensor, values: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` (fp32) := zeros, with ``values`` at the bitmap's indices, ascending."""
    values = values.contiguous()
    _library().gossip_bitmap_scatter(bitmap.data_ptr(), values.data_ptr(), out.numel(), out.data_ptr(), _threads())


def sweep(matrix: torch.Tensor, update: tuple[torch.Tensor, torch.Tensor] | None, side: int,
          vectors: torch.Tensor, messages: torch.Tensor) -> None:
    """:func:`gossip.edge.sweep` in one pass over fp32 ``matrix`` (contiguous): add ``left @ right``
    (``update``; ``left`` of any strides) in place, then ``messages[e] = M vectors[e]`` (side 0) or
    ``Mᵀ vectors[e]`` (side 1) for every edge ``e``; ``right``, ``vectors`` and ``messages`` may be
    strided views whose rows (``length × rank`` for each edge) are contiguous. Raises MemoryError,
    changing nothing, when side 1's block sums (about ``numel / 2^14 × edges × rank`` floats) cannot
    be allocated."""
    left, right = update if update is not None else (matrix, matrix)  # width 0: unread
    if right.stride(-1) != 1:
        right = right.contiguous()
    width = update[0].shape[1] if update is not None else 0
    edges, length, rank = vectors.shape
    columns = vectors.transpose(1, 2).reshape(edges * rank, length)  # a view for rank 1
    if columns.stride(-1) != 1:
        columns = columns.contiguous()
    if edges and not messages[0].is_contiguous():
        raise ValueError("each edge's message must be contiguous")
    status = _library().gossip_sweep(matrix.data_ptr(), matrix.shape[0], matrix.shape[1], left.data_ptr(),
                                     *left.stride(), right.data_ptr(), right.stride(0), width, side, columns.data_ptr(),
                                     columns.stride(0), edges, rank, messages.data_ptr(),
                                     messages.stride(0) if edges else 0, _threads())
    if status != 0:
        raise MemoryError(f"gossip.native.sweep: no memory for the block sums of a {tuple(matrix.shape)} matrix")


class RoundMatrix(ctypes.Structure):
    """A matrix of :func:`sweep_round` and the offsets of its vectors in a row of the round's buffers:
    ``offsets[0]`` in the layout of length-``rows`` blocks, ``offsets[1]`` of length-``cols`` ones."""

    _fields_ = [("matrix", ctypes.c_void_p), ("rows", ctypes.c_int64), ("cols", ctypes.c_int64),
                ("offsets", ctypes.c_int64 * 2)]


def round_matrices(matrices: list[torch.Tensor], offsets: list[tuple[int, int]]) -> ctypes.Array:
    """The table of :func:`sweep_round` for contiguous fp32 CPU ``matrices`` (it holds their addresses:
    they must stay where they are while it is used)."""
    table = (RoundMatrix * len(matrices))()
    for entry, matrix, places in zip(table, matrices, offsets):
        entry.matrix, entry.rows, entry.cols = matrix.data_ptr(), matrix.shape[0], matrix.shape[1]
        entry.offsets[:] = places
    return table


def sweep_round(table: ctypes.Array, edges: int, update: tuple[torch.Tensor, torch.Tensor] | None, side: int,
                vectors: torch.Tensor | None, messages: torch.Tensor | None) -> None:
    """:func:`sweep` for every matrix of ``table`` (rank 1) in one call. The buffers are fp32, one row
    per edge, each row contiguous: with ``update = (left, right)``, every ``M += Σ_e l_e r_eᵀ`` (edge
    ``e``'s vectors in its rows of ``left`` and ``right`` at the matrix's offsets 0 and 1); then, with
    ``vectors``, each edge's message on ``side`` into its row of ``messages``. Raises MemoryError,
    changing nothing, when side 1's block sums cannot be allocated."""
    buffers = [*(update or ()), *((vectors, messages) if vectors is not None else ())]
    if any(b.dtype != torch.float32 or b.dim() != 2 or b.stride(1) != 1 or not b.is_cpu for b in buffers):
        raise ValueError("sweep_round: every buffer must be a 2-D fp32 CPU tensor with contiguous rows")
    null = (None, 0)
    left, right = ((u.data_ptr(), u.stride(0)) for u in update) if update is not None else (null, null)
    projection = (vectors.data_ptr(), vectors.stride(0)) if vectors is not None else null
    out = (messages.data_ptr(), messages.stride(0)) if vectors is not None else null
    status = _library().gossip_round(table, len(table), edges, *left, *right, side, *projection, *out, _threads())
    if status != 0:
        raise MemoryError(f"gossip.native.sweep_round: no memory for the block sums of {len(table)} matrices")


def normalize(vectors: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """:func:`gossip.edge.orthonormalize` of rank-1 vectors, all in one call: in each row of the 2-D
    fp32 ``vectors`` (contiguous), the int64 ``offsets[s]`` and ``lengths[s]`` (contiguous) place
    vector ``s``; returns a new tensor with every vector divided by its 2-norm (summed in double), or
    ``1 / sqrt(length)`` where the norm is not positive (zero or NaN)."""
    out = torch.empty_like(vectors)
    _library().gossip_normalize(vectors.data_ptr(), out.data_ptr(), vectors.shape[0], vectors.shape[1],
                                offsets.data_ptr(), lengths.data_ptr(), offsets.numel())
    return out
