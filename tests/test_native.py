"""Tests for gossip.native: the C kernels write the same bytes as the torch path of every codec, and
PowerGossip's fused sweep computes the torch sweep's products, whatever the threads and the build."""

import os
import sys
import time
from pathlib import Path

import pytest
import torch

from gossip import compression, edge, native
from gossip.compression import build

needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler: the kernels are not built")

#: Sizes around lanes (8), quantise steps (64), kernel blocks (2^16) and encoder chunks (2^18).
SIZES = [1, 7, 8, 9, 63, 65, 1000, 2**16 + 13, 2**18 + 3 * 2**16 + 5]

CODECS = [
    build("sign"),
    *(build("qsgd", levels=s) for s in (1, 3, 7, 15, 127)),  # 2, 3, 4, 5 and 8 bits
    *(build("moniqua", bits=b) for b in range(1, 9)),
    build("topk", fraction=0.001),  # the thresholded fast path from 2^16 elements
    build("randomk", fraction=0.01),
]


#: The instruction sets of native.ISA_FLAGS this CPU runs: a library is built and checked for each.
ISAS = {"default": ["default"], "avx2": ["default", "avx2"], "avx512": ["default", "avx2", "avx512"]}[native.cpu_isa()]


def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the codecs take their torch path, as on a machine without a compiler."""
    monkeypatch.setattr(native, "usable", lambda *tensors: False)
    monkeypatch.setattr(native, "available", lambda: False)


def messages(codec: compression.Codec, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    encode_generator = torch.Generator().manual_seed(seed) if codec.encode_needs_generator else None
    decode_generator = torch.Generator().manual_seed(seed) if codec.decode_needs_generator else None
    wire = codec.encode(x, encode_generator)
    return wire, codec.decode(wire, x, decode_generator)


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_kernels_write_the_torch_paths_bytes(
    codec: compression.Codec, d: int, threads: int, isa: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native, "_library", lambda: native._load(isa))
    x = torch.rand(d, generator=torch.Generator().manual_seed(d)).sub_(0.5)
    x[:: max(1, d // 5)] = 0.0  # zeros: sign(0), QSGD's zero level
    if d > 2:
        x[1] = 0.75  # beyond Moniqua's clamp
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        wire, decoded = messages(codec, x, seed=d)
        torch_path(monkeypatch)
        expected_wire, expected_decoded = messages(codec, x, seed=d)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(wire, expected_wire)
    assert torch.equal(decoded, expected_decoded)


#: Inputs at the edges of the scales and clamps.
EXTREMES = {
    "zeros": [0.0] * 9,
    "subnormal norm": [1e-45, -3e-45, 0.0, 2e-45],  # QSGD's factor overflows: clamped to the largest float
    "norm above fp32": [3e38, -3e38, 3e38],  # the double norm rounds to inf
    "infinite": [float("inf"), -1.0, 0.5],
    "nan": [float("nan"), 1.0, -2.0],
}


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("values", EXTREMES.values(), ids=EXTREMES.keys())
@pytest.mark.parametrize("codec", [build("sign"), build("qsgd", levels=5), build("moniqua", bits=3)], ids=repr)
def test_kernels_encode_extreme_inputs_as_the_torch_path(
    codec: compression.Codec, values: list[float], isa: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native, "_library", lambda: native._load(isa))
    x = torch.tensor(values * 30)
    wire, decoded = messages(codec, x, seed=3)
    torch_path(monkeypatch)
    expected_wire, expected_decoded = messages(codec, x, seed=3)
    assert torch.equal(wire, expected_wire)
    torch.testing.assert_close(decoded, expected_decoded, rtol=0, atol=0, equal_nan=True)


@needs_native
def test_decode_reads_a_wire_at_any_byte_offset() -> None:
    codec = build("qsgd", levels=3)  # 3 bits: codes straddle bytes
    x = torch.rand(1001).sub_(0.5)
    buffer = torch.zeros(codec.wire_bytes(1001) + 3, dtype=torch.uint8)
    wire = codec.encode(x, torch.Generator().manual_seed(0), out=buffer[3:])
    decoded = codec.decode(wire, x)
    assert torch.equal(decoded, codec.decode(wire.clone(), x))
    assert decoded.abs().max() <= torch.linalg.vector_norm(x) * (1 + 1e-6)


def splitmix64(seed: int, counter: int) -> int:
    """The reference, in Python integers."""
    mask = 2**64 - 1
    z = (seed + (counter + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


@pytest.mark.parametrize("seed", [0, 12345, 2**63 - 1])
def test_rounding_noise_is_splitmix64_in_int16_lanes(seed: int) -> None:
    noise = compression._rounding_noise(torch.tensor(seed), 8, 10, torch.device("cpu"))
    expected = []
    for element in range(8, 18):
        lane = (splitmix64(seed, element // 4) >> (16 * (element % 4))) & 0xFFFF
        expected.append(lane - 2**16 if lane >= 2**15 else lane)
    assert noise.tolist() == expected


@needs_native
@pytest.mark.parametrize("period, run, rank", [(1, 1, 1), (7, 1, 50), (999, 16, 16_017), (1000, 16, 300)])
def test_sample_threshold_is_the_ranked_key_of_the_sample_runs(period: int, run: int, rank: int) -> None:
    # 16,017: the whole sample of 1,002 runs, the last of one entry; (7, 1): a strided sample
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(3))
    x[::97] = x[::97].round()  # ties
    sample = compression._topk_sample(x, period, run)
    assert sample.numel() == sum(min(run, x.numel() - start) for start in range(0, x.numel(), period))
    keys = compression._magnitude_keys(sample)
    assert native.sample_threshold(x, period, run, rank) == int(torch.topk(keys, rank).values[-1])


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("capacity", [10, 60, 1000])  # 60: one part's share overflows, the whole fits
def test_topk_select_for_any_capacity_guess(isa: str, capacity: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_library", lambda: native._load(isa))
    x = torch.rand(70_000, generator=torch.Generator().manual_seed(1))  # two parts: 2^16 and the rest
    x[torch.arange(20) * 1000] += 2.0  # 20 candidates, all in the first part
    threshold = int(compression._magnitude_keys(torch.tensor([1.5])))
    indices, values = torch.empty(5, dtype=torch.int32), torch.empty(5)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        written = native.topk_select(x, threshold, 5, capacity, indices, values)
        too_few = native.topk_select(x, threshold, 21, capacity, torch.empty(21, dtype=torch.int32), torch.empty(21))
    finally:
        torch.set_num_threads(previous)
    expected = torch.sort(torch.topk(x, 5).indices).values
    assert written and torch.equal(indices.long(), expected) and torch.equal(values, x[expected])
    assert not too_few


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [1, 16, 17, 1000])
@pytest.mark.parametrize("offset", [0, 64, 3])  # 3: not aligned for a view, through temporaries
def test_topk_writes_exactly_its_message(isa: str, k: int, offset: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The selection is written straight into the message: its values end where its indices begin,
    and nothing is written past either."""
    monkeypatch.setattr(native, "_library", lambda: native._load(isa))
    d = 2**17
    x = torch.randn(d, generator=torch.Generator().manual_seed(k))
    codec = build("topk", fraction=k / d)
    buffer = torch.full((offset + codec.wire_bytes(d) + 64,), 0xAB, dtype=torch.uint8)
    wire = codec.encode(x, out=buffer[offset : offset + codec.wire_bytes(d)])
    expected = torch.sort(torch.topk(x.abs(), k).indices).values
    values, indices = wire[: 4 * k].clone().view(torch.float32), wire[4 * k :].clone().view(torch.int32)
    assert torch.equal(indices.long(), expected) and torch.equal(values, x[expected])
    assert torch.all(buffer[:offset] == 0xAB) and torch.all(buffer[offset + codec.wire_bytes(d) :] == 0xAB)


@pytest.mark.parametrize("seed", [0, 2**63 - 1])
def test_index_draws_are_the_top_53_bits_of_splitmix64_times_d(seed: int) -> None:
    d = 1_000_003
    draws = compression._index_draws(torch.tensor(seed), 5, 20, d, torch.device("cpu"))
    assert draws.tolist() == [int(splitmix64(seed, j) >> 11) * d >> 53 for j in range(5, 25)]


@needs_native
@pytest.mark.parametrize("d, k", [(8, 8), (1000, 250), (100_003, 1000)])  # (8, 8): rounds of top-ups
def test_randomk_bitmap_holds_the_torch_paths_index_set(d: int, k: int) -> None:
    bitmap = native.randomk_bitmap(d, k, seed=7)
    bits = (bitmap.unsqueeze(1) >> torch.arange(64)) & 1
    assert torch.equal(bits.flatten().nonzero().flatten(), compression._distinct_draws(d, k, torch.tensor(7)))


@needs_native
def test_without_openmp_the_kernels_run_on_posix_threads(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "OPENMP", ("-fno-such-openmp-flag",))  # the compiler rejects it
    library = native._open(native.build(cache_dir=tmp_path))
    x = torch.rand(3 * 2**16 + 5, generator=torch.Generator().manual_seed(2)).sub_(0.5)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = [messages(codec, x, seed=1) for codec in CODECS]
        monkeypatch.setattr(native, "_library", lambda: library)
        found = [messages(codec, x, seed=1) for codec in CODECS]
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for pair in zip(expected, found) for a, b in zip(*pair))


@needs_native
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_openmp_kernels_share_torchs_libgomp() -> None:
    mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line}
    assert len(mapped) <= 1, mapped  # one OpenMP runtime in the process, torch's


#: (rows, cols): one row, vector and lane tails, and 300 × 130 in three blocks of rows (2^14 floats each).
SWEEP_SHAPES = [(1, 1), (6, 27), (37, 70), (300, 130)]


def sweep_once(rows: int, cols: int, side: int, edges: int, rank: int, width: int,
               threads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The matrix and the messages after one edge.sweep (native or torch, as patched) with an update
    of ``width`` columns (0: none); each message in a row of a wider send buffer, as PowerGossip lays
    them out."""
    gen = torch.Generator().manual_seed(rows * cols + side)
    matrix = torch.randn(rows, cols, generator=gen)
    right = torch.randn(width, cols + 3, generator=gen)[:, 1:1 + cols]  # rows of a wider buffer
    update = (torch.randn(width, rows, generator=gen).T, right) if width else None
    length, vector_length = (rows, cols) if side == 0 else (cols, rows)
    vectors = torch.randn(edges, vector_length * rank + 3, generator=gen)[:, 2:2 + vector_length * rank]
    vectors = vectors.view(edges, vector_length, rank)
    out = torch.full((edges, length * rank + 5), float("nan"))
    messages = out[:, 2:2 + length * rank].view(edges, length, rank)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        edge.sweep(matrix, update, side, vectors, messages)
    finally:
        torch.set_num_threads(previous)
    assert out[:, :2].isnan().all() and out[:, 2 + length * rank:].isnan().all()  # nothing outside the rows
    return matrix, messages


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("side", [0, 1])
@pytest.mark.parametrize("edges, rank, width", [(0, 1, 2), (1, 1, 0), (2, 1, 2), (3, 2, 6), (2, 1, 7)])
@pytest.mark.parametrize("rows, cols", SWEEP_SHAPES)
def test_sweep_kernel_computes_the_torch_sweep_the_same_on_any_threads_and_build(
    rows: int, cols: int, edges: int, rank: int, width: int, side: int, isa: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = (rows, cols, side, edges, rank, width)
    monkeypatch.setattr(native, "_library", lambda: native._load("default"))
    reference = sweep_once(*case, threads=1)
    monkeypatch.setattr(native, "_library", lambda: native._load(isa))
    for threads in (1, 2, 3):
        found = sweep_once(*case, threads=threads)
        assert all(torch.equal(a, b) for a, b in zip(found, reference)), threads
    torch_path(monkeypatch)
    expected = sweep_once(*case, threads=2)
    for a, b in zip(found, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def round_once(shapes: list[tuple[int, int]], edges: int, side: int, with_update: bool, with_messages: bool,
               threads: int, each: bool) -> list[torch.Tensor]:
    """The matrices and the messages after one rank-1 round over ``shapes``, laid out as a
    Neighbourhood lays them out (each edge's vectors and messages in its row of a buffer, every
    matrix at its offsets), by one native.sweep_round or (``each``) one native.sweep per matrix."""
    gen = torch.Generator().manual_seed(len(shapes) + 10 * edges + side)
    matrices = [torch.randn(shape, generator=gen) for shape in shapes]
    offsets = [(sum(r for r, _ in shapes[:m]) + 1, sum(c for _, c in shapes[:m]) + 2) for m in range(len(shapes))]
    widths = (sum(r for r, _ in shapes) + 3, sum(c for _, c in shapes) + 4)  # rows-long and cols-long layouts
    left, right = (torch.randn(edges, width, generator=gen) for width in widths)
    vectors = torch.randn(edges, widths[1 - side], generator=gen)
    out = torch.full((edges, widths[side]), float("nan"))
    update = (left, right) if with_update else None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if not each:
            native.sweep_round(native.round_matrices(matrices, offsets), edges, update, side,
                               vectors if with_messages else None, out)
        for matrix, (rows_at, cols_at) in zip(matrices if each else [], offsets):
            rows, cols = matrix.shape
            at = (rows_at, cols_at)
            views = (left[:, rows_at:rows_at + rows].T, right[:, cols_at:cols_at + cols]) if with_update else None
            length = (rows, cols)
            vector = vectors[:, at[1 - side]:at[1 - side] + length[1 - side]].unsqueeze(-1)
            message = out[:, at[side]:at[side] + length[side]].unsqueeze(-1)
            native.sweep(matrix, views, side, vector if with_messages else vector[:0],
                         message if with_messages else message[:0])
    finally:
        torch.set_num_threads(previous)
    return matrices + [out]


@needs_native
@pytest.mark.parametrize("side", [0, 1])
@pytest.mark.parametrize("with_update, with_messages", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("edges", [1, 2, 3])
def test_a_round_of_many_matrices_is_their_sweeps_one_by_one(edges: int, with_update: bool, with_messages: bool,
                                                          side: int) -> None:
    """native.sweep_round reads and writes each matrix's vectors, messages and update factors at its
    offsets of the round's buffers, and sweeps every matrix as native.sweep does, bit for bit, on
    any number of threads; it writes nothing else."""
    case = (SWEEP_SHAPES, edges, side, with_update, with_messages)
    expected = round_once(*case, threads=2, each=True)
    for threads in (1, 2, 3):
        found = round_once(*case, threads=threads, each=False)
        for a, b in zip(found, expected):
            assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)), threads


@needs_native
def test_a_round_refuses_buffers_it_cannot_address() -> None:
    matrix = torch.zeros(3, 4)
    table = native.round_matrices([matrix], [(0, 0)])
    good, columns = torch.zeros(2, 4), torch.zeros(4, 2).T  # rows 1 float apart, entries 2 apart
    for update in [(good, columns), (good.double(), good)]:
        with pytest.raises(ValueError, match="2-D fp32 CPU tensor with contiguous rows"):
            native.sweep_round(table, 2, update, 0, None, None)
    assert not matrix.any()  # nothing written


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_normalize_kernel_is_orthonormalize_and_depends_on_each_vector_alone(
    isa: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One C call normalises every rank-1 vector of a round as edge.orthonormalize does (up to
    rounding; zero and NaN vectors become the normalised ones vector), the same on every build, and
    a vector's result does not depend on the vectors beside it."""
    blocks = [(0, 1, 37, 1), (37, 3, 5, 1), (52, 1, 1000, 1)]
    vectors = torch.randn(3, 1052, generator=torch.Generator().manual_seed(0))
    vectors[1, 37:42] = 0.0
    vectors[2, 43] = float("nan")
    places = edge.rank_one_places(blocks)
    monkeypatch.setattr(native, "_library", lambda: native._load("default"))
    reference = edge.orthonormalize_rows(vectors, blocks, places)
    monkeypatch.setattr(native, "_library", lambda: native._load(isa))
    found = edge.orthonormalize_rows(vectors, blocks, places)
    assert torch.equal(found, reference)
    expected = edge.orthonormalize_rows(vectors, blocks)  # the torch ops, block by block
    torch.testing.assert_close(found, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(found[1, 37:42], torch.full((5,), 5 ** -0.5))
    assert torch.equal(found[2, 42:47], torch.full((5,), 5 ** -0.5))
    for row in range(3):
        assert torch.equal(edge.orthonormalize_rows(vectors[row:row + 1].clone(), blocks, places)[0], found[row])
    assert edge.rank_one_places([(0, 1, 4, 2)]) is None  # rank 2: QR, block by block


def test_build_names_a_missing_compiler(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="no-such-compiler"):
        native.build(compiler="no-such-compiler", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


@needs_native
def test_build_caches_one_library_per_source(tmp_path) -> None:
    library = native.build(cache_dir=tmp_path)
    assert library.exists() and native.build(cache_dir=tmp_path) == library
    assert [p.name for p in tmp_path.iterdir()] == [library.name]


@needs_native
def test_build_removes_libraries_unused_for_a_month(tmp_path) -> None:
    def age(path: Path, days: float) -> Path:
        path.touch()
        stamp = time.time() - days * 86400
        os.utime(path, (stamp, stamp))
        return path

    stale = native.STALE_DAYS + 1
    old = [age(tmp_path / "gossip-kernels-avx2-0123456789abcdef.so", stale),
           age(tmp_path / "gossip-kernels-default-0123456789abcdefxyz.so.partial", stale)]
    kept = [age(tmp_path / "gossip-kernels-default-fedcba9876543210.so", native.STALE_DAYS - 1),
            age(tmp_path / "notes.txt", stale), age(tmp_path / "gossip-kernels-readme.md", stale)]
    library = native.build(cache_dir=tmp_path)
    assert not any(path.exists() for path in old)
    assert sorted(tmp_path.iterdir()) == sorted([library, *kept])
    age(library, stale)
    assert native.build(cache_dir=tmp_path) == library  # reused: marked as used again
    assert time.time() - library.stat().st_mtime < 3600
    assert all(path.exists() for path in kept)


def test_environment_turns_the_kernels_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOSSIP_NATIVE", "0")
    native._library.cache_clear()
    try:
        assert not native.available()
        assert not native.usable(torch.zeros(3))
    finally:
        monkeypatch.delenv("GOSSIP_NATIVE")
        native._library.cache_clear()
