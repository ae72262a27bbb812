"""topologies: valid mixing matrices for every builder, closed-form spectral gaps, validation
errors, the one-peer exponential schedule, independence from torch, and the command line."""

from __future__ import annotations

import doctest
import importlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import topologies
from topologies import Topology

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    *(topologies.ring(n) for n in (1, 2, 3, 7, 16)),
    *(topologies.torus(r, c) for r, c in ((1, 1), (1, 2), (2, 2), (1, 5), (2, 3), (3, 3), (3, 5), (4, 4))),
    *(topologies.expander(n, d, seed=s) for n, d, s in ((2, 1, 0), (10, 3, 0), (15, 4, 1), (32, 5, 2))),
    *(topologies.complete(n) for n in (1, 2, 5)),
    *(topologies.star(n) for n in (1, 2, 3, 9)),
    *(topologies.hypercube(d) for d in (0, 1, 2, 4)),
    *(topologies.exponential(n) for n in (1, 2, 3, 7, 16)),
    *(topologies.erdos_renyi(n, p, seed=s) for n, p, s in ((1, 0.5, 0), (2, 1.0, 0), (13, 0.3, 0), (20, 0.2, 5))),
    *(build(6, weights=w) for build in (topologies.ring, topologies.star, topologies.exponential)
      for w in topologies.SCHEMES),
    *(topologies.torus(r, c, weights=w) for r, c in ((1, 1), (2, 3)) for w in topologies.SCHEMES),
    topologies.from_networkx(nx.les_miserables_graph()),
    topologies.from_matrix(topologies.torus(3, 3).W),
]


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def uniform_gap(eigenvalues: np.ndarray) -> float:
    """1 - slem^2 from the closed-form eigenvalues, the eigenvalue 1 (k = 0) listed first."""
    return 1 - np.max(np.abs(eigenvalues[1:])) ** 2


# --- every builder gives a valid topology ------------------------------------------------------


@pytest.mark.parametrize("topology", CASES, ids=lambda t: t.name)
def test_every_builder_gives_a_valid_mixing_matrix(topology):
    W, n = topology.W, topology.n
    assert W.shape == (n, n) and W.dtype == np.float64
    assert np.allclose(W, W.T, atol=1e-12)
    assert np.allclose(W.sum(axis=1), 1) and (W >= 0).all()
    adjacency = nx.to_numpy_array(topology.graph, nodelist=range(n)) != 0
    assert not ((W != 0) & ~adjacency & ~np.eye(n, dtype=bool)).any()
    assert nx.is_connected(topology.graph) and sorted(topology.graph) == list(range(n))
    assert 0 <= topology.spectral_gap <= 1 and 0 <= topology.slem <= 1
    assert topology.edges == sorted(tuple(sorted(e)) for e in topology.graph.edges)
    for i in range(n):
        assert topology.neighbors(i) == sorted(topology.graph[i]) and i not in topology.neighbors(i)
        assert topology.degree(i) == len(topology.neighbors(i)) <= topology.max_degree
        assert topology.weight(i, i) == W[i, i]


def test_topology_accessors_and_read_only_matrix():
    ring = topologies.ring(16)
    assert ring.neighbors(0) == [1, 15] and ring.weight(0, 1) == pytest.approx(1 / 3)
    assert ring.degree(3) == 2 and ring.max_degree == 2 and len(ring.edges) == 16
    assert "ring" in repr(ring) and "spectral gap" in ring.describe()
    with pytest.raises(ValueError):
        ring.W[0, 0] = 1.0
    with pytest.raises(ValueError, match="out of range"):
        ring.neighbors(16)


def test_single_node_and_periodic_two_node_matrix():
    single = topologies.ring(1)
    assert single.W.tolist() == [[1.0]] and single.slem == 0.0 and single.spectral_gap == 1.0
    periodic = topologies.complete(2, weights="max_degree")  # W = [[0, 1], [1, 0]] is allowed
    assert periodic.W.tolist() == [[0.0, 1.0], [1.0, 0.0]] and periodic.spectral_gap == pytest.approx(0)


# --- closed-form spectra -----------------------------------------------------------------------


@pytest.mark.parametrize("n", range(3, 21))
def test_ring_with_uniform_weights_matches_closed_form(n):
    k = np.arange(n)
    expected = uniform_gap(1 / 3 + 2 / 3 * np.cos(2 * np.pi * k / n))  # even n: k = n/2 gives -1/3
    assert topologies.ring(n, weights="uniform").spectral_gap == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("rows, cols", [(3, 3), (3, 4), (4, 4), (3, 7), (5, 6)])
def test_torus_with_uniform_weights_matches_closed_form(rows, cols):
    a, b = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    eigenvalues = (1 + 2 * np.cos(2 * np.pi * a / rows) + 2 * np.cos(2 * np.pi * b / cols)).ravel() / 5
    topology = topologies.torus(rows, cols, weights="uniform")
    assert np.allclose(topology.W[topology.W > 0], 1 / 5)
    assert topology.spectral_gap == pytest.approx(uniform_gap(eigenvalues), abs=1e-10)


@pytest.mark.parametrize("n", [2, 3, 8])
def test_complete_graph_with_uniform_weights_averages_in_one_round(n):
    topology = topologies.complete(n, weights="uniform")
    assert np.allclose(topology.W, 1 / n) and topology.spectral_gap == pytest.approx(1)


def test_weight_schemes_on_a_path():
    path = nx.path_graph(3)
    assert np.allclose(topologies.metropolis_hastings(path)[0], [2 / 3, 1 / 3, 0])
    assert np.allclose(topologies.uniform(path)[0], [2 / 3, 1 / 3, 0])
    assert np.allclose(topologies.max_degree(path)[1], [1 / 2, 0, 1 / 2])
    assert np.allclose(topologies.mixing_matrix(path, lambda G: np.eye(3)), np.eye(3))


# --- degrees and neighbour sets ----------------------------------------------------------------


@pytest.mark.parametrize("n, degree, seed", [(10, 3, 0), (16, 4, 1), (33, 6, 2)])
def test_expander_is_regular_and_seeded(n, degree, seed):
    topology = topologies.expander(n, degree, seed=seed)
    assert all(topology.degree(i) == degree for i in range(n))
    assert topology.edges == topologies.expander(n, degree, seed=seed).edges


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_hypercube_is_dim_regular_with_one_bit_neighbours(dim):
    topology = topologies.hypercube(dim)
    assert topology.n == 2**dim
    for i in range(topology.n):
        assert topology.neighbors(i) == sorted(i ^ (1 << b) for b in range(dim))


def test_exponential_neighbours_for_16():
    topology = topologies.exponential(16)
    for i in range(16):
        assert set(topology.neighbors(i)) == {(i + s * 2**k) % 16 for s in (1, -1) for k in range(4)}
    assert topology.max_degree == 7


def test_torus_labels_and_small_sides():
    torus = topologies.torus(3, 4)
    assert torus.neighbors(5) == [1, 4, 6, 9]  # row 1, column 1
    assert topologies.torus(2, 2).edges == [(0, 1), (0, 2), (1, 3), (2, 3)]  # a 4-cycle, no doubles
    assert topologies.torus(1, 3).edges == topologies.ring(3).edges


def test_star_centre_and_from_networkx_relabelling():
    star = topologies.star(6)
    assert star.neighbors(0) == [1, 2, 3, 4, 5] and star.neighbors(4) == [0]
    relabelled = topologies.from_networkx(nx.Graph([("c", "a"), ("a", "b")]))
    assert relabelled.edges == [(0, 1), (0, 2)]


def test_build_matches_the_builders():
    assert topologies.build("ring", 8).edges == topologies.ring(8).edges
    assert topologies.build("torus", 12).name.startswith("torus(rows=3, cols=4")
    assert topologies.build("torus", 12, rows=2).name.startswith("torus(rows=2, cols=6")
    assert topologies.build("torus", 12, cols=2).name.startswith("torus(rows=6, cols=2")
    assert topologies.build("torus", 7).name.startswith("torus(rows=1, cols=7")
    assert topologies.build("hypercube", 16).edges == topologies.hypercube(4).edges
    assert topologies.build("expander", 12, degree=3, seed=4).edges == topologies.expander(12, 3, 4).edges
    assert topologies.build("erdos_renyi", 10, p=0.5, weights="uniform").name.endswith("weights=uniform)")
    assert topologies.builder_parameters("torus") == ["rows", "cols"]
    assert topologies.builder_parameters("erdos_renyi") == ["n", "p", "seed"]


# --- validation errors -------------------------------------------------------------------------


def ring3() -> nx.Graph:
    return nx.cycle_graph(3)


@pytest.mark.parametrize("graph, W, message", [
    (ring3(), [[0.5, 0.5, 0], [0.25, 0.5, 0.25], [0.25, 0, 0.75]], "not symmetric"),
    (ring3(), [[1.5, -0.5, 0], [-0.5, 1, 0.5], [0, 0.5, 0.5]], "negative"),
    (ring3(), np.full((3, 3), 0.5), "sum to 1"),
    (nx.path_graph(3), np.full((3, 3), 1 / 3), "not an edge"),
    (nx.Graph([(0, 1), (2, 3)]), np.kron(np.eye(2), np.full((2, 2), 0.5)), "not connected"),
    (ring3(), np.eye(4), "shape"),
    (ring3(), [[np.nan, 0, 0], [0, 1, 0], [0, 0, 1]], "non-finite"),
    (nx.Graph([(1, 2), (2, 3)]), np.eye(3), "nodes must be exactly 0..2"),
    (nx.Graph([(0, 0), (0, 1)]), np.full((2, 2), 0.5), "self loops"),
    (nx.DiGraph([(0, 1)]), np.full((2, 2), 0.5), "not strongly connected"),
    (nx.MultiGraph([(0, 1)]), np.full((2, 2), 0.5), "networkx"),
])
def test_invalid_topologies_are_rejected_by_name(graph, W, message):
    with pytest.raises(ValueError, match=message):
        Topology(graph, W)


def test_disconnected_graph_is_allowed_on_request():
    matching = Topology(nx.Graph([(0, 1), (2, 3)]), np.kron(np.eye(2), np.full((2, 2), 0.5)),
                        require_connected=False)
    assert matching.spectral_gap == pytest.approx(0)


@pytest.mark.parametrize("make, message", [
    (lambda: topologies.ring(0), "ring: n must be an integer >= 1, got 0"),
    (lambda: topologies.ring(2.5), "ring: n must be an integer"),
    (lambda: topologies.build("torus", 8, rows=3, cols=3), "rows=3, cols=3, n=8"),
    (lambda: topologies.build("torus", 8, rows=3), "rows=3 does not divide n=8"),
    (lambda: topologies.build("hypercube", 12), "power of 2"),
    (lambda: topologies.expander(5, 3), "n * degree even"),
    (lambda: topologies.expander(4, 4), "degree < n"),
    (lambda: topologies.expander(6, 1), "no connected 1-regular graph"),
    (lambda: topologies.erdos_renyi(5, 0), "p must be a number in (0, 1]"),
    (lambda: topologies.erdos_renyi(40, 0.01), "no connected graph"),
    (lambda: topologies.build("moebius", 8), "unknown topology 'moebius'; allowed: complete, "),
    (lambda: topologies.build("ring", 8, degree=3), "ring does not take parameter 'degree'"),
    (lambda: topologies.build("torus", 8, p=0.5), "it takes: rows, cols"),
    (lambda: topologies.build("expander", 8), "missing a required argument: 'degree'"),
    (lambda: topologies.ring(8, weights="fancy"), "unknown weight scheme 'fancy'; allowed: max_degree"),
    (lambda: topologies.builder_parameters("moebius"), "unknown topology"),
    (lambda: topologies.from_matrix(np.ones((2, 3)) / 3), "square"),
    (lambda: topologies.build_schedule("moebius", 8), "one_peer_exponential"),
    (lambda: topologies.build_schedule("one_peer_exponential", 8, rows=2), "does not take parameter 'rows'"),
])
def test_bad_parameters_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


# --- schedules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 8, 16])
def test_one_peer_exponential_averages_exactly_after_log2_n_steps(n):
    schedule = topologies.OnePeerExponential(n)
    assert schedule.period == n.bit_length() - 1 and schedule.n == n
    for start in (0, 1):  # any log2 n consecutive steps
        product = np.eye(n)
        for t in range(start, start + schedule.period):
            topology = schedule(t)
            assert topology.max_degree == 1 and np.allclose(topology.W[topology.W > 0], 0.5)
            product = topology.W @ product
        assert np.allclose(product, np.full((n, n), 1 / n), atol=1e-14)


def test_one_peer_exponential_partners_and_errors():
    schedule = topologies.build_schedule("one_peer_exponential", 8)
    assert [schedule(t).neighbors(5) for t in range(4)] == [[4], [7], [1], [4]]
    assert not schedule.is_static and topologies.OnePeerExponential(1)(3).W.tolist() == [[1.0]]
    with pytest.raises(ValueError, match="power of 2"):
        topologies.OnePeerExponential(12)
    with pytest.raises(ValueError, match="step t must be an integer >= 0"):
        schedule(-1)


def test_static_schedule():
    schedule = topologies.build_schedule("torus", 6, weights="uniform")
    assert schedule.is_static and schedule.period == 1 and schedule.n == 6
    assert schedule(0) is schedule(99)


def test_docstring_examples():
    for module in ("topologies", "topologies.builders", "topologies.weights", "topologies.schedules",
                   "topologies.topology"):
        assert doctest.testmod(importlib.import_module(module)).failed == 0


# --- independence from torch, command line -----------------------------------------------------


def ring_gap(n: int) -> float:
    """Closed form: W = 1/3 on the ring (Metropolis–Hastings, degree 2) has the eigenvalues
    (1 + 2 cos(2πk/n)) / 3; the largest modulus but 1 is k = 1's (n >= 5), and the gap is 1 − slem²."""
    return 1 - ((1 + 2 * math.cos(2 * math.pi / n)) / 3) ** 2


def test_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import topologies; print(topologies.ring(8).spectral_gap)"
    result = run("-c", code)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(ring_gap(8), rel=1e-12)  # float64 eigenvalues


def test_cli_prints_the_summary(capsys):
    from topologies.__main__ import main

    main(["ring", "16"])
    assert f"spectral gap {ring_gap(16):.6g}" in capsys.readouterr().out
    main(["torus", "3", "5"])
    # W = 1/5 on the 3 × 5 torus (degree 4): eigenvalues (1 + 2 cos(2πa/3) + 2 cos(2πb/5)) / 5
    slem = max(abs(1 + 2 * math.cos(2 * math.pi * a / 3) + 2 * math.cos(2 * math.pi * b / 5)) / 5
               for a in range(3) for b in range(5) if (a, b) != (0, 0))
    out = capsys.readouterr().out
    assert "degree 4 at every node" in out and f"spectral gap {1 - slem ** 2:.6g}" in out
    main(["one_peer_exponential", "8", "--step", "2"])
    assert "partner i XOR 4" in capsys.readouterr().out  # 2^(t mod log2 8) at t = 2


@pytest.mark.parametrize("args, message", [
    (["hypercube", "3x"], "dim must be an integer"),
    (["ring"], "ring takes 1 parameter"),
    (["moebius", "4"], "unknown topology"),
    (["ring", "8", "--seed", "1"], "takes no seed"),
])
def test_cli_bad_input_is_one_line_with_status_2(args, message, capsys):
    from topologies.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err



# --- directed graphs (push-sum) ----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_directed_exponential_sends_to_powers_of_two_with_column_stochastic_weights(n):
    t = topologies.directed_exponential(n)
    hops = [2 ** k for k in range(n.bit_length()) if 2 ** k < n]
    for i in range(n):
        assert t.out_neighbors(i) == sorted({(i + h) % n for h in hops} - {i})
        for j in t.out_neighbors(i):
            assert i in t.in_neighbors(j)
            assert t.weight(j, i) == pytest.approx(1 / (t.degree(i) + 1))
    assert np.allclose(t.W.sum(axis=0), 1) and (t.W >= 0).all() and t.directed
    if n == 16:
        assert t.max_degree == 4 and t.weight(1, 0) == pytest.approx(0.2)


def test_a_directed_topology_asks_for_in_or_out_neighbours():
    with pytest.raises(ValueError, match="out_neighbors"):
        topologies.directed_exponential(4).neighbors(0)
    ring = topologies.ring(5)
    assert ring.out_neighbors(0) == ring.in_neighbors(0) == ring.neighbors(0) and not ring.directed


def test_an_irregular_digraph_gets_column_but_not_row_stochastic_weights():
    t = topologies.from_networkx(nx.DiGraph([(0, 1), (1, 2), (2, 0), (0, 2)]))
    assert np.allclose(t.W.sum(axis=0), 1) and not np.allclose(t.W.sum(axis=1), 1)
    assert t.out_neighbors(0) == [1, 2] and t.in_neighbors(2) == [0, 1]


@pytest.mark.parametrize("W, message", [
    ([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]], None),  # a directed 3-cycle, column-stochastic
    ([[0.6, 0.0, 0.5], [0.4, 0.5, 0.0], [0.0, 0.5, 0.6]], "column"),  # rows sum to 1, columns do not
])
def test_from_matrix_builds_a_directed_topology_from_an_asymmetric_w(W, message):
    if message is None:
        t = topologies.from_matrix(W)
        assert t.directed and t.out_neighbors(0) == [2] and t.in_neighbors(0) == [1]  # W[i, j]: i receives from j
    else:
        with pytest.raises(ValueError, match=message):
            topologies.from_matrix(W)


def test_the_one_peer_directed_schedule_averages_exactly_over_a_period():
    schedule = topologies.build_schedule("one_peer_directed_exponential", 8)
    assert schedule.period == 3
    product = np.eye(8)
    for t in range(3):
        assert all(len(schedule(t).out_neighbors(i)) == 1 for i in range(8))
        product = schedule(t).W @ product
    assert np.allclose(product, np.full((8, 8), 1 / 8))


def test_directed_erdos_renyi_is_strongly_connected_with_out_degrees_that_differ():
    t = topologies.directed_erdos_renyi(16, 0.2, seed=0)
    assert t.directed and nx.is_strongly_connected(t.graph)
    assert np.allclose(t.W.sum(axis=0), 1) and not np.allclose(t.W.sum(axis=1), 1)  # push-sum's case
    for j in range(16):
        assert t.weight(j, j) == pytest.approx(1 / (len(t.out_neighbors(j)) + 1))
    assert t.edges == topologies.directed_erdos_renyi(16, 0.2, seed=0).edges != topologies.directed_erdos_renyi(16, 0.2, seed=5).edges
    assert topologies.build("directed_erdos_renyi", 16, p=0.2, seed=0).edges == t.edges
    sparse = [topologies.directed_erdos_renyi(8, 0.3, seed=s).edges for s in range(4)]  # most draws fail here
    assert all(a != b for k, a in enumerate(sparse) for b in sparse[k + 1:])  # yet every seed has its own graph
    with pytest.raises(ValueError, match="directed_erdos_renyi: no strongly connected graph with n=16, p=0.01 .*a larger p"):
        topologies.directed_erdos_renyi(16, 0.01)


def test_directed_builders_refuse_a_weights_scheme():
    with pytest.raises(ValueError, match="directed_exponential: weights are 1/\\(out-degree \\+ 1\\)"):
        topologies.build("directed_exponential", 8, "uniform")
    assert topologies.build("directed_exponential", 8).directed


def test_the_command_line_prints_a_directed_graph(root):
    result = subprocess.run([sys.executable, "-m", "topologies", "directed_exponential", "16"],
                            capture_output=True, text=True, timeout=60, cwd=root)
    assert result.returncode == 0 and "column-stochastic" in result.stdout and "out-degree 4" in result.stdout
    refused = subprocess.run([sys.executable, "-m", "topologies", "directed_exponential", "16", "--weights", "uniform"],
                             capture_output=True, text=True, timeout=60, cwd=root)
    assert refused.returncode == 2 and refused.stderr.startswith("error: directed_exponential: weights")
