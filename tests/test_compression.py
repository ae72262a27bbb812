"""Tests for gossip.algorithms.compression: wire sizes, round trips, statistics and errors."""

import math

import pytest
import torch

from gossip.algorithms.compression import Codec, Moniqua, build, pack_bits, unpack_bits
from gossip.algorithms.compression import _distinct_draws, _topk_entries

SIZES = [1, 7, 13, 64, 1000]

CODECS = [
    build("identity"),
    build("topk", fraction=0.3),
    build("topk", fraction=1.0),
    build("randomk", fraction=0.3),
    build("randomk", fraction=0.05, rescale=True),
    build("sign"),
    build("qsgd", levels=1),
    build("qsgd", levels=4),
    build("qsgd", levels=127),
    Moniqua(bits=1),
    Moniqua(bits=3),
    Moniqua(bits=8),
]


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def analytic_bytes(codec: Codec, d: int) -> int:
    """Wire sizes written out independently of the implementation."""
    if codec.name == "identity":
        return 4 * d
    if codec.name in ("topk", "randomk"):
        k = max(1, round(codec.fraction * d))
        return (8 if codec.name == "topk" else 4) * k
    if codec.name == "sign":
        return math.ceil(d / 8) + 4
    if codec.name == "qsgd":
        b = math.ceil(math.log2(codec.levels + 1)) + 1
        return 4 + math.ceil(d * b / 8)
    if codec.name == "moniqua":
        return math.ceil(d * codec.bits / 8)
    raise AssertionError(codec.name)


def round_trip(codec: Codec, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    wire = codec.encode(x, gen(seed, x.device.type))
    return codec.decode(wire, x, gen(seed, x.device.type))


def as_float(wire: torch.Tensor) -> torch.Tensor:
    """Read raw wire bytes as fp32."""
    return wire.clone().view(torch.float32)


def mc_mean(codec: Codec, x: torch.Tensor, draws: int) -> torch.Tensor:
    return torch.stack([round_trip(codec, x, seed) for seed in range(draws)]).mean(0)


# ----------------------------------------------------------------- bit packing
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 13, 1000])
def test_pack_unpack_round_trip(bits: int, count: int) -> None:
    codes = torch.randint(0, 2**bits, (count,), generator=gen(bits), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == math.ceil(count * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, count), codes)


def test_pack_bits_is_little_endian() -> None:
    ones = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1])
    assert pack_bits(ones, 1).tolist() == [1, 1]
    assert pack_bits(torch.tensor([1, 2]), 4).tolist() == [0x21]
    assert pack_bits(torch.tensor([5, 1]), 3).tolist() == [0b001101]


def reference_pack(codes: list[int], bits: int) -> list[int]:
    """The documented stream, one bit at a time: code i's bit j is stream bit i*bits + j."""
    out = [0] * math.ceil(len(codes) * bits / 8)
    for i, code in enumerate(codes):
        for j in range(bits):
            position = i * bits + j
            out[position // 8] |= ((code >> j) & 1) << (position % 8)
    return out


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 8, 9, 15, 16, 17, 63, 64, 65])
def test_pack_matches_bitwise_reference(bits: int, count: int) -> None:
    codes = torch.randint(0, 2**bits, (count,), generator=gen(count + 100 * bits), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.tolist() == reference_pack(codes.tolist(), bits)
    assert torch.equal(unpack_bits(packed, bits, count), codes)


def test_pack_keeps_only_low_bits() -> None:
    assert pack_bits(torch.tensor([0xFF, 0x10]), 4).tolist() == [0x0F]


def test_unpack_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 7)


# ------------------------------------------------------------------ wire sizes
@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize("d", SIZES)
def test_wire_size_and_dtype(codec: Codec, d: int) -> None:
    wire = codec.encode(torch.randn(d, generator=gen(d)), gen())
    assert wire.dtype == torch.uint8 and wire.dim() == 1
    assert wire.numel() == codec.wire_bytes(d) == analytic_bytes(codec, d)


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_decode_matches_like(codec: Codec) -> None:
    x = torch.rand(3, 5, 2, generator=gen()) - 0.5
    out = round_trip(codec, x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    wire = codec.encode(x, gen())
    like = torch.empty(6, 5, dtype=torch.float64)
    assert codec.decode(wire, like, gen()).dtype == torch.float64


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_decode_rejects_wrong_wire_length(codec: Codec) -> None:
    x = torch.randn(10)
    wire = codec.encode(x, gen())
    with pytest.raises(ValueError, match="bytes"):
        codec.decode(wire[:-1], x, gen())


def test_encode_output_does_not_alias_input() -> None:
    x = torch.randn(5)
    wire = build("identity").encode(x)
    x.zero_()
    assert build("identity").decode(wire, x).abs().sum() > 0


# ------------------------------------------------------------------------ out=
@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize("d", [13, 1000])
def test_out_buffers_written_in_place(codec: Codec, d: int) -> None:
    x = torch.rand(d, generator=gen(d)) - 0.5
    fresh = codec.encode(x, gen(5))
    wire = torch.full((codec.wire_bytes(d) + 3,), 7, dtype=torch.uint8)
    result = codec.encode(x, gen(5), out=wire[1:-2])
    assert result.data_ptr() == wire[1:].data_ptr() and torch.equal(result, fresh)
    assert wire[0] == 7 and wire[-2:].tolist() == [7, 7]  # nothing outside the slice
    flat = torch.full((d + 2,), 9.0)
    decoded = codec.decode(fresh, x, gen(5), out=flat[1:-1])
    assert decoded.data_ptr() == flat[1:].data_ptr()
    assert torch.equal(decoded, codec.decode(fresh, x, gen(5)))
    assert flat[0] == 9 and flat[-1] == 9


@pytest.mark.parametrize(
    "out", [torch.empty(41, dtype=torch.uint8), torch.empty(40, dtype=torch.int8),
            torch.empty(80, dtype=torch.uint8)[::2], torch.empty(4, 10, dtype=torch.uint8)],
)
def test_encode_rejects_bad_out(out: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="out for the wire must be") as info:
        build("identity").encode(torch.randn(10), out=out)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "out", [torch.empty(11), torch.empty(10, dtype=torch.float64), torch.empty(20)[::2], torch.empty(2, 5)],
)
def test_decode_rejects_bad_out(out: torch.Tensor) -> None:
    codec = build("sign")
    x = torch.randn(10)
    with pytest.raises(ValueError, match="out for the decoded must be") as info:
        codec.decode(codec.encode(x), x, out=out)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------- identity
def test_identity_exact() -> None:
    x = torch.randn(3, 5, 2, generator=gen())
    assert torch.equal(round_trip(build("identity"), x), x)


# ------------------------------------------------------------------ sparsifiers
@pytest.mark.parametrize("d", SIZES)
def test_topk_keeps_largest_magnitudes(d: int) -> None:
    codec = build("topk", fraction=0.3)
    x = torch.randn(d, generator=gen(d))
    k = codec.k_for(d)
    keep = torch.topk(x.abs(), k).indices
    expected = torch.zeros(d).index_copy_(0, keep, x[keep])
    assert torch.equal(round_trip(codec, x), expected)


def test_k_for() -> None:
    codec = build("topk", fraction=0.3)
    assert [codec.k_for(d) for d in (1, 2, 10, 1000)] == [1, 1, 3, 300]
    assert build("randomk", fraction=1.0).k_for(13) == 13


@pytest.mark.parametrize("d", SIZES)
def test_randomk_indices_match_seeded_generator(d: int) -> None:
    codec = build("randomk", fraction=0.3)
    x = torch.randn(d, generator=gen(d)) + 10  # no zeros, so support == chosen indices
    wire = codec.encode(x, gen(7))
    out = codec.decode(wire, x, gen(7))
    chosen = torch.randperm(d, generator=gen(7))[: codec.k_for(d)]
    assert torch.equal(out.nonzero().flatten(), chosen.sort().values)
    assert torch.equal(out[chosen], x[chosen])
    assert torch.equal(as_float(wire), x[chosen])


def test_randomk_different_seed_moves_indices() -> None:
    codec = build("randomk", fraction=0.1)
    x = torch.randn(1000, generator=gen()) + 10
    out = codec.decode(codec.encode(x, gen(1)), x, gen(2))
    assert not torch.equal(out.nonzero(), round_trip(codec, x, seed=1).nonzero())


def test_rescaled_randomk_unbiased() -> None:
    codec = build("randomk", fraction=0.3, rescale=True)
    d, draws = 10, 2000
    x = torch.randn(d, generator=gen())
    k = codec.k_for(d)
    std = x.abs() * math.sqrt((d / k - 1) / draws)
    # the mean of 2000 draws: 5 standard errors (a false failure has probability < 1e-6 per entry)
    assert torch.all((mc_mean(codec, x, draws) - x).abs() <= 5 * std + 1e-6)


TOPK_D = 70_000  # large enough for the thresholded path (d >= 4 * 2^14, k <= d / 16)


def topk_inputs() -> dict[str, torch.Tensor]:
    x = torch.randn(TOPK_D, generator=gen(11))
    huge = torch.randn(TOPK_D, generator=gen(12))
    huge[123] = 1e30
    ties = torch.randint(-3, 4, (TOPK_D,), generator=gen(13)).float()
    nan = x.clone()
    nan[[7, 70, 700]] = float("nan")
    return {"random": x, "sorted": x.abs().sort().values, "descending": -x.abs().sort().values,
            "constant": torch.full((TOPK_D,), 0.5), "ties": ties, "huge": huge, "nan": nan,
            "zeros-and-one": torch.zeros(TOPK_D).index_fill_(0, torch.tensor([5]), -2.0)}


@pytest.mark.parametrize("name", list(topk_inputs()))
@pytest.mark.parametrize("k", [1, 700, 4375, 30_000])  # 30,000: beyond the thresholded path
def test_topk_selects_the_largest_magnitudes_ties_to_the_lower_index(
    name: str, k: int
) -> None:
    x = topk_inputs()[name]
    indices, values = _topk_entries(x, k)
    # a stable sort keeps the lower index first among equal magnitudes; NaN sorts above all
    expected = torch.sort(torch.sort(x.abs(), descending=True, stable=True).indices[:k]).values
    assert torch.equal(indices.long(), expected)
    assert torch.equal(values.nan_to_num(), x[expected].nan_to_num())


@pytest.mark.parametrize("d, k", [(1000, 10), (1000, 250), (100_000, 1000), (50, 1)])
def test_distinct_draws_are_distinct_in_range_and_reproducible(d: int, k: int) -> None:
    drawn = _distinct_draws(d, k, gen(3))
    assert drawn.numel() == k and drawn.unique().numel() == k
    assert 0 <= drawn.min() and drawn.max() < d
    assert torch.equal(drawn, _distinct_draws(d, k, gen(3)))


def test_distinct_draws_roughly_uniform() -> None:
    d, k, draws = 40, 10, 2000
    counts = torch.zeros(d)
    for seed in range(draws):
        counts[_distinct_draws(d, k, gen(seed))] += 1
    expected = draws * k / d  # 500 per index; binomial std about 19
    # 6 standard deviations of a count (≤ √expected): a false failure has probability < 1e-8 per index
    assert (counts - expected).abs().max() < 6 * math.sqrt(expected)


def test_randomk_sender_and_receiver_agree_on_small_fraction() -> None:
    codec = build("randomk", fraction=0.01)
    x = torch.randn(5000, generator=gen()) + 10
    out = codec.decode(codec.encode(x, gen(9)), x, gen(9))
    support = out.nonzero().flatten()
    assert support.numel() == codec.k_for(5000)
    assert torch.equal(out[support], x[support])


# ------------------------------------------------------------------------ sign
@pytest.mark.parametrize("d", SIZES)
def test_sign_norm(d: int) -> None:
    x = torch.randn(d, generator=gen(d))
    expected = torch.sign(x) * x.abs().sum() / d
    torch.testing.assert_close(round_trip(build("sign"), x), expected, rtol=1e-6, atol=0)


def test_sign_of_zero_is_positive() -> None:
    x = torch.tensor([0.0, -1.0, 2.0])  # ||x||_1 / d = 1
    assert round_trip(build("sign"), x).tolist() == [1.0, -1.0, 1.0]


# ------------------------------------------------------------------------ qsgd
def test_qsgd_unbiased_and_on_grid() -> None:
    s, draws = 2, 2000
    codec = build("qsgd", levels=s)
    x = torch.randn(6, generator=gen())
    norm = x.norm()
    outs = torch.stack([round_trip(codec, x, seed) for seed in range(draws)])
    levels = outs.abs() * s / norm
    # integer levels up to float32 rounding of |x| s / ‖x‖; an error within one level (norm / s)
    assert torch.allclose(levels, levels.round(), atol=1e-5)
    assert torch.all((outs - x).abs() <= norm / s + 1e-6)
    bound = norm / (2 * s * math.sqrt(draws))  # a level-rounding's std is at most half a level
    assert torch.all((outs.mean(0) - x).abs() <= 5 * bound)  # 5 standard errors


@pytest.mark.parametrize(
    ("values", "levels"),
    [([3.0, -4.0], 5), ([1.0, -2.0, 2.0], 3), ([0.0, 6.0, 0.0, -8.0], 10), ([-2.5], 1)],
)
def test_qsgd_exact_on_grid(values: list[float], levels: int) -> None:
    x = torch.tensor(values)
    codec = build("qsgd", levels=levels)
    for seed in range(20):
        assert torch.equal(round_trip(codec, x, seed), x)


def test_qsgd_zero_norm() -> None:
    x = torch.zeros(9)
    assert torch.equal(round_trip(build("qsgd", levels=3), x), x)


# --------------------------------------------------------------------- moniqua
@pytest.mark.parametrize("bits", range(1, 9))
def test_moniqua_on_grid_and_within_delta(bits: int) -> None:
    codec = Moniqua(bits=bits)
    n = 2**bits - 1
    x = torch.rand(500, generator=gen(bits)) - 0.5
    out = round_trip(codec, x)
    k = (out + 0.5) * n
    assert torch.allclose(k, k.round(), atol=1e-4)  # integer levels up to float32 rounding of (x + ½) n
    assert k.min() >= -1e-4 and k.max() <= n + 1e-4
    assert torch.all((out - x).abs() < codec.delta + 1e-6)


@pytest.mark.parametrize("bits", range(1, 9))
def test_moniqua_levels_round_trip_exactly(bits: int) -> None:
    codec = Moniqua(bits=bits)
    n = 2**bits - 1
    like = torch.empty(n + 1)
    levels = codec.decode(pack_bits(torch.arange(n + 1), bits), like)
    torch.testing.assert_close(levels, torch.arange(n + 1) / n - 0.5)
    for seed in range(5):
        assert torch.equal(round_trip(codec, levels, seed), levels)


def test_moniqua_unbiased() -> None:
    codec = Moniqua(bits=2)
    draws = 2000
    x = torch.rand(8, generator=gen()) - 0.5
    bound = codec.delta / (2 * math.sqrt(draws))  # a rounding's std is at most half a level
    assert torch.all((mc_mean(codec, x, draws) - x).abs() <= 5 * bound)  # 5 standard errors


def test_moniqua_clamps() -> None:
    out = round_trip(Moniqua(bits=4), torch.tensor([-3.0, 2.0, 0.5, -0.5]))
    assert out.tolist() == [-0.5, 0.5, 0.5, -0.5]


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("gzip", {}, "unknown codec 'gzip'.*topk"),
        ("topk", {"fraction": 0.1, "frac": 2}, r"frac: unknown key \(did you mean 'fraction'\?\)"),
        ("identity", {"fraction": 0.1}, "unknown key"),
        ("topk", {}, "fraction: missing"),
        ("topk", {"fraction": 0}, "fraction"),
        ("topk", {"fraction": 1.5}, "fraction"),
        ("randomk", {"fraction": -0.1}, "fraction"),
        ("randomk", {"fraction": 0.5, "rescale": "yes"}, "rescale"),
        ("qsgd", {"levels": 0}, "levels"),
        ("qsgd", {"levels": 128}, "levels"),
        ("qsgd", {"levels": 2.5}, "levels"),
    ],
)
def test_build_errors(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(name, **options)


@pytest.mark.parametrize("bits", [0, 9])
def test_moniqua_refuses_bits_outside_1_to_8(bits: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        Moniqua(bits=bits)


def test_pack_bits_rejects_bad_width() -> None:
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.zeros(3), 9)


@pytest.mark.parametrize(
    ("name", "options"),
    [("randomk", {"fraction": 0.5}), ("qsgd", {"levels": 2}), ("moniqua", {"bits": 2})],
)
def test_missing_generator(name: str, options: dict) -> None:
    codec = Moniqua(**options) if name == "moniqua" else build(name, **options)
    x = torch.randn(10)
    with pytest.raises(ValueError, match="Generator"):
        codec.encode(x)
    wire = codec.encode(x, gen())
    if name == "randomk":
        with pytest.raises(ValueError, match="Generator"):
            codec.decode(wire, x)
    else:
        codec.decode(wire, x)  # stochastic rounding needs no randomness to decode


def test_encode_rejects_non_float_and_empty() -> None:
    with pytest.raises(ValueError, match="float"):
        build("identity").encode(torch.arange(4))
    with pytest.raises(ValueError, match="non-empty"):
        build("sign").encode(torch.zeros(0))


def test_repr_shows_options() -> None:
    assert repr(build("topk", fraction=0.25)) == "TopK(fraction=0.25)"
    randomk = build("randomk", fraction=0.5, rescale=True)
    assert repr(randomk) == "RandomK(fraction=0.5, rescale=True)"
    assert repr(Moniqua(bits=3)) == "Moniqua(bits=3)"
    assert repr(build("identity")) == "Identity()"


# ------------------------------------------------------------------------ CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_cuda_round_trip(codec: Codec) -> None:
    x_cpu = torch.rand(3, 5, 7, generator=gen()) - 0.5
    x = x_cpu.cuda()
    wire = codec.encode(x, gen(3, "cuda"))
    assert wire.is_cuda and wire.numel() == codec.wire_bytes(x.numel())
    out = codec.decode(wire, x, gen(3, "cuda"))
    assert out.is_cuda and out.shape == x.shape
    if codec.name in ("identity", "topk", "sign"):  # deterministic: must match CPU
        torch.testing.assert_close(out.cpu(), round_trip(codec, x_cpu), rtol=1e-6, atol=1e-7)
    if codec.name == "moniqua":
        assert torch.equal(round_trip(codec, out, seed=4), out)
    cpu_gen_out = codec.decode(codec.encode(x, gen(3)), x, gen(3))  # CPU generator, CUDA data
    assert cpu_gen_out.is_cuda
