"""The simulated clock on cases computed by hand (docs/networks.md states the rules), the unit
parser, and the clock driven by real runs: the events it records, ``sim_time_s`` in the records,
the dry run, and the same numbers in one process and in two."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gossip import config as config_module
from gossip.algorithms import ALGORITHMS
from gossip.comm.messages import Network
from gossip.registry import ConfigError
from gossip.comm.simclock import NetworkConfig, GroupsConfig, SimClock, TrafficLog, parse_rate, parse_time
from gossip.train.trainer import Trainer
from gossip.train import main

from conftest import read_metrics, run_cli

MB = 1_000_000


def clock(workers: int, **keys) -> SimClock:
    return SimClock(NetworkConfig(**keys), workers)


def ring_round(n: int, nbytes: int) -> tuple[str, dict]:
    return ("round", {(i, j): nbytes for i in range(n) for j in ((i - 1) % n, (i + 1) % n)})


def test_units_parse_to_bytes_per_second_and_seconds():
    assert parse_rate("10Gbit/s") == 1.25e9
    assert parse_rate("300Gbit/s") == 37.5e9
    assert parse_rate("1GB/s") == 1e9
    assert parse_rate("8 Mbit/s") == 1e6
    assert parse_time("20us") == pytest.approx(2e-5)
    assert parse_time("2ms") == pytest.approx(2e-3)
    assert parse_time("0s") == 0.0


@pytest.mark.parametrize("keys, message", [
    ({"bandwidth": "10Gb/s"}, "network.bandwidth: '10Gb/s' is not a rate; write a number and one of the units bit/s"),
    ({"bandwidth": "0Gbit/s"}, "network.bandwidth: '0Gbit/s': a bandwidth must be above 0"),
    ({"latency": 20}, "network.latency: 20.0 is not a time; write a number and one of the units s, ms, us"),
    ({"groups": {"latency": "2 fortnights"}}, "network.groups.latency: '2 fortnights' is not a time"),
    ({"compute": "fast"}, "network.compute: 'fast' is not allowed; allowed: measured or float"),
    ({"speed": {4: 0.5}}, "network.speed: worker 4 does not exist; workers are 0..3"),
    ({"speed": {1: 0}}, "network.speed: worker 1's factor 0.0 is out of range; allowed: > 0"),
])
def test_a_bad_network_key_is_one_line_naming_it(keys, message):
    with pytest.raises(ConfigError) as error:
        config_module.from_dict({"workers": 4, "train": {"steps": 1}, "network": keys})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_two_workers_send_then_compute_or_overlap():
    """1 MB each way on 8 Mbit/s (1 MB/s) with 1 ms latency: a round takes 1.001 s. After a 0.5 s
    computation (step_first order) a step takes 1.501 s; overlapped with it, 1.001 s."""
    after = [("compute", {}), ("round", {(0, 1): MB, (1, 0): MB})]
    sequential = clock(2, bandwidth="8Mbit/s", latency="1ms", compute=0.5)
    sequential.run([after] * 3)
    assert sequential.finish == pytest.approx([4.503, 4.503])
    overlapped = clock(2, bandwidth="8Mbit/s", latency="1ms", compute=0.5)
    overlapped.run([list(reversed(after))] * 3)
    assert overlapped.time == pytest.approx(3.003)
    switched_off = clock(2, bandwidth="8Mbit/s", latency="1ms", compute=0.5, overlap=False)
    switched_off.run([list(reversed(after))] * 3)
    assert switched_off.time == pytest.approx(4.503)


def test_two_messages_share_the_link_and_the_downlink_counts():
    """Worker 0 sends 1 MB to each of 1 and 2 (its link carries 2 MB: both arrive at 2 s); worker 3
    receives 1 MB from each of 1 and 2, which start at 0: it cannot be done before 2 s either."""
    c = clock(4, bandwidth="8Mbit/s", latency="0s", compute=0.0)
    assert c.round([0.0] * 4, {(0, 1): MB, (0, 2): MB}) == pytest.approx([2.0, 2.0, 2.0, 0.0])
    assert c.round([0.0] * 4, {(1, 3): MB, (2, 3): MB}) == pytest.approx([0.0, 1.0, 1.0, 2.0])


def test_a_slow_worker_on_a_ring_of_four_delays_everyone():
    """compute 1 s, worker 3 at half speed (2 s); 1 MB messages at 8 Mbit/s, latency 1 ms.

    Round after the computation (τ = 1 ms + 2 MB / 1 MB/s = 2.001 s, two messages share each link):
    worker 3 is ready at 2, so its neighbours 0 and 2 start their round at 2, and worker 1, which
    is not its neighbour, receives their messages at 2 + τ: every step takes 2 + τ for everyone."""
    after = [("compute", {}), ring_round(4, MB)]
    c = clock(4, bandwidth="8Mbit/s", latency="1ms", compute=1.0, speed={3: 0.5})
    c.step(after)
    assert c.finish == pytest.approx([4.001] * 4)
    c.step(after)
    assert c.finish == pytest.approx([8.002] * 4)

    # τ = 0.001 + 0.4 = 0.401 < 1. Step 1: the round runs at 0..τ during the computation: finish
    # [1, 1, 1, 2]. Step 2: 0 and 2 wait for 3 (ready at 2), 1 waits for their messages: the round
    # ends at 2 + τ for everyone, 3 still computes until 4. Step 3: the round starts when 3 is
    # ready at 4 and ends at 4 + τ; 3 computes until 6.
    before = [ring_round(4, MB // 5), ("compute", {})]
    c = clock(4, bandwidth="8Mbit/s", latency="1ms", compute=1.0, speed={3: 0.5})
    c.step(before)
    assert c.finish == pytest.approx([1, 1, 1, 2])
    c.step(before)
    assert c.finish == pytest.approx([2.401, 2.401, 2.401, 4])
    c.step(before)
    assert c.finish == pytest.approx([4.401, 4.401, 4.401, 6])
    assert c.time == pytest.approx(6)


def test_groups_send_on_the_node_link_and_the_main_link_in_parallel():
    """Ring of 4 in groups of 2: 0-1 and 2-3 are node-local (800 Mbit/s, 10 us), 1-2 and 3-0 cross
    the main link (8 Mbit/s, 1 ms). With 1 MB messages a round takes max(10 us + 0.01 s, 1 ms + 1 s)
    = 1.001 s; without groups both messages share the main link: 1 ms + 2 s."""
    groups = GroupsConfig(size=2, bandwidth="800Mbit/s", latency="10us")
    c = clock(4, bandwidth="8Mbit/s", latency="1ms", compute=0.0, groups=groups)
    c.step([("compute", {}), ring_round(4, MB)])
    assert c.finish == pytest.approx([1.001] * 4)
    assert c.link_of(0, 1) is c.group_link and c.link_of(1, 2) is c.link
    flat = clock(4, bandwidth="8Mbit/s", latency="1ms", compute=0.0)
    flat.step([("compute", {}), ring_round(4, MB)])
    assert flat.finish == pytest.approx([2.001] * 4)
    same = clock(4, bandwidth="8Mbit/s", latency="1ms", compute=0.0,
                 groups=GroupsConfig(size=2, bandwidth="8Mbit/s", latency="1ms"))
    assert same.round([0.0] * 4, ring_round(4, MB)[1]) == pytest.approx([1.001] * 4)  # two links, not one
    # only the node-local messages: 10 us + 1 MB / 100 MB/s
    assert c.round([0.0] * 4, {(0, 1): MB, (1, 0): MB}) == pytest.approx([0.01001, 0.01001, 0.0, 0.0])


def tiny(**keys) -> dict:
    raw = {"seed": 0, "workers": 4, "topology": {"name": "ring"},
           "task": {"name": "logistic", "dim": 8, "hidden": 0, "samples_per_worker": 64},
           "train": {"steps": 4, "eval_every": 2, "local_eval": False}, "optimizer": {"lr": 0.1}}
    raw.update(keys)
    return raw


def test_all_reduce_is_a_ring_all_reduce():
    """Logistic model of 9 parameters (36 B of gradient), 4 workers: each sends 2·3/4·36 = 54 B;
    at 8 kbit/s (1000 B/s) with 1 ms latency: 0.054 s + 2·3·1 ms = 0.06 s, after every worker's
    computation (0.25 s, worker 2 at half speed: 0.5 s): 0.56 s per step."""
    network = {"bandwidth": "8kbit/s", "latency": "1ms", "compute": 0.25, "speed": {2: 0.5}}
    trainer = Trainer(config_module.from_dict(tiny(algorithm={"name": "allreduce"}, network=network)),
                      Network(4), progress=False)
    trainer.run()
    assert [r["sim_time_s"] for r in trainer.history] == pytest.approx([1.12, 2.24])
    assert trainer.history[-1]["bytes_per_worker"] == 4 * 54


def test_two_workers_in_a_run_match_the_hand_count():
    """D-PSGD (overlap) on 2 workers: 36 B to the one neighbour at 8 kbit/s, 1 ms: 0.037 s a round,
    overlapped with 0.01 s of compute: 0.037 s a step; step_first: 0.047 s."""
    network = {"bandwidth": "8kbit/s", "latency": "1ms", "compute": 0.01}
    for order, per_step in (("overlap", 0.037), ("step_first", 0.047)):
        raw = tiny(workers=2, algorithm={"name": "dpsgd", "order": order}, network=network)
        trainer = Trainer(config_module.from_dict(raw), Network(2), progress=False)
        trainer.run()
        assert [r["sim_time_s"] for r in trainer.history] == pytest.approx([2 * per_step, 4 * per_step])


@pytest.mark.parametrize("algorithm, keys", [
    ({"name": "dpsgd"}, {}), ({"name": "dpsgd", "order": "step_first"}, {}),
    ({"name": "powergossip", "iterations": 3}, {}), ({"name": "allreduce"}, {}), ({"name": "local"}, {}),
    ({"name": "choco"}, {}), ({"name": "gradient_tracking"}, {}), ({"name": "gradient_tracking", "order": "step_first"}, {}),
    ({"name": "d2"}, {"topology": {"name": "complete"}}),
    ({"name": "qgm"}, {"optimizer": {"lr": 0.1, "momentum": 0.9}}),
    ({"name": "sgp"}, {"topology": {"name": "directed_exponential"}}),
    ({"name": "sgp", "order": "step_first"}, {"topology": {"name": "one_peer_directed_exponential"}}),
], ids=["dpsgd", "dpsgd-step_first", "powergossip-3", "allreduce", "local", "choco", "gradient_tracking",
        "gradient_tracking-step_first", "d2-complete", "qgm", "sgp-directed", "sgp-step_first-one_peer_directed"])
def test_a_step_records_the_events_the_dry_run_plans(algorithm, keys):
    """What a real step records (compute, rounds, collectives, in order) is what ``step_events``
    tells the dry run, and a round's bytes are what ``bytes_per_step`` counts."""
    config = config_module.from_dict(tiny(algorithm=algorithm, **keys))
    trainer = Trainer(config, Network(4), progress=False)
    log = TrafficLog()  # recorded, but not replayed: the run has no clock
    trainer.network.traffic = log
    trainer.train_step()
    trainer.train_step()
    implementation = ALGORITHMS.implementation(config.algorithm.name)
    steps = log.take()
    assert [tuple(kind for kind, _ in events) for events in steps] == [implementation.step_events(config.algorithm)] * 2
    shapes = [p.shape for p in trainer.task.build_model().parameters()]
    per_step = implementation.bytes_per_step(config.algorithm, shapes, trainer.topology_schedule(0), 0)
    sent = sum(nbytes for events in steps for kind, values in events if kind != "compute"
               for key, nbytes in values.items() if (key[0] if isinstance(key, tuple) else key) == 0)
    assert sent == 2 * per_step


def test_dry_run_prints_the_simulated_time(capsys, root):
    """The quick-start LSTM dry run on 1 Gbit/s: D-PSGD's bytes per step over the link (two
    neighbours share it) plus the latency, per step and times the steps of an epoch."""
    args = ["--config", str(root / "configs/ring16_lstm.yaml"), "--dry-run", "--set", "network={bandwidth: 1Gbit/s}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    per_step = 254_556_624 / 1.25e8 + 20e-6
    assert f"sim time     {per_step:.6g} s per step, {per_step * 68:.6g} s per epoch" in out
    assert main(["--config", str(root / "configs/ring16_lstm.yaml"), "--dry-run"]) == 0
    assert "sim time" not in capsys.readouterr().out


@pytest.mark.parametrize("algorithm", ["{name: powergossip, iterations: 2}", "{name: dpsgd}"])
def test_sim_time_is_the_same_in_one_process_and_two(tmp_path, root, algorithm):
    """Link faults and a slow worker, 4 workers in 1 process and in 2 (torchrun): the same
    sim_time_s, losses and bytes at every record, and a resumed run continues the clock."""
    args = ["--config", str(root / "configs/logistic.yaml"), "--set", "workers=4", "--set", "train.steps=20",
            "--set", "train.eval_every=10", "--set", "train.local_eval=false", "--no-progress",
            "--set", f"algorithm={algorithm}", "--set", "faults.link_drop=0.3",
            "--set", "network={bandwidth: 1Mbit/s, latency: 1ms, compute: 0.01, speed: {3: 0.5}}"]
    assert main([*args, "--run-dir", str(tmp_path / "one")]) == 0
    multi = run_cli([*args, "--run-dir", str(tmp_path / "two")], cwd=tmp_path, torchrun=2, timeout=300)
    assert multi.returncode == 0, multi.stderr
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [10, 20]
    for a, b in zip(one, two):
        assert b["sim_time_s"] == a["sim_time_s"] > 0
        assert b["bytes_per_worker"] == a["bytes_per_worker"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert main([*args, "--set", "train.steps=10", "--run-dir", str(tmp_path / "resumed")]) == 0
    assert main(["--resume", str(tmp_path / "resumed"), "--set", "train.steps=20", "--no-progress"]) == 0
    assert read_metrics(tmp_path / "resumed")[-1]["sim_time_s"] == one[-1]["sim_time_s"]


def test_plot_puts_simulated_time_on_the_x_axis(tmp_path, root):
    args = ["--config", str(root / "configs/logistic.yaml"), "--set", "train.steps=4", "--set", "train.eval_every=2",
            "--set", "train.local_eval=false", "--no-progress"]
    assert main([*args, "--set", "network={compute: 0.1}", "--run-dir", str(tmp_path / "net")]) == 0
    assert main([*args, "--run-dir", str(tmp_path / "plain")]) == 0
    plot = [sys.executable, str(root / "scripts/plot.py"), "--x", "sim_time_s"]
    drawn = subprocess.run([*plot, str(tmp_path / "net"), "--out", str(tmp_path / "fig.png")],
                           capture_output=True, text=True, timeout=120)
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "fig.png").read_bytes().startswith(b"\x89PNG")
    refused = subprocess.run([*plot, str(tmp_path / "plain"), "--out", str(tmp_path / "no.png")],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "has no sim_time_s (sim_time_s needs a network section)" in refused.stderr
