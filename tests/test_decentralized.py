"""DecentralizedOptimizer: a torchrun script with one worker per process gives the numbers of the
built-in Trainer with all workers in one process; the gradient copy after ``zero_grad`` to None;
checkpoints; the one-line errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.distributed as dist
from torch import nn

import topologies
from gossip import ConfigError, DecentralizedOptimizer
from gossip.comm.spawn import spawn
from gossip.train import main

from conftest import failure, read_metrics, run_torchrun

STEPS = 12


@pytest.mark.parametrize("algorithm, options", [("dpsgd", {}), ("powergossip", {"iterations": 2})])
def test_a_torchrun_script_gives_the_numbers_of_the_trainer_in_one_process(tmp_path, root, algorithm, options):
    """examples/torchrun_gossip.py in 4 gloo processes (one worker each) and ``gossip.train`` with the
    4 workers in this process, on configs/logistic.yaml's task, seed and optimizer: the same mean
    training loss, consensus distance and bytes at every step (overlap order, the default)."""
    sets = [f"algorithm.{key}={value}" for key, value in {"name": algorithm, **options}.items()]
    args = ["--config", str(root / "configs/logistic.yaml"), "--run-dir", str(tmp_path / "one"), "--no-progress"]
    for item in ["workers=4", f"train.steps={STEPS}", "train.eval_every=1", "train.local_eval=false", *sets]:
        args += ["--set", item]
    assert main(args) == 0
    script = ["--algorithm", algorithm, "--steps", str(STEPS), "--log-every", "1", "--metrics", str(tmp_path / "four.jsonl")]
    for key, value in options.items():
        script += ["--option", f"{key}={value}"]
    result = run_torchrun([str(root / "examples/torchrun_gossip.py"), *script], 4, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, failure(result)
    one = read_metrics(tmp_path / "one")
    four = [json.loads(line) for line in (tmp_path / "four.jsonl").read_text().splitlines()]
    assert [r["step"] for r in four] == [r["step"] for r in one] == list(range(1, STEPS + 1))
    for a, b in zip(one, four):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
        assert b["consensus_distance"] == pytest.approx(a["consensus_distance"], rel=1e-5)
        assert b["bytes_per_worker"] == a["bytes_per_worker"]
    assert four[-1]["train_loss"] < four[0]["train_loss"]


# --- one process (world size 1) ---------------------------------------------------------------


@pytest.fixture
def process_group(tmp_path):
    """A gloo process group of one process (a file store: no port)."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(5, 3)
        self.unused = nn.Parameter(torch.ones(2))  # gets no gradient: None after zero_grad(set_to_none)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def train(model: nn.Module, zero_grad, step, steps: int = 3, gen: torch.Generator | None = None) -> None:
    """``steps`` steps on batches drawn from ``gen`` (default: a fresh generator seeded 0)."""
    gen = torch.Generator().manual_seed(0) if gen is None else gen
    for _ in range(steps):
        zero_grad()
        model(torch.randn(8, 5, generator=gen)).pow(2).mean().backward()
        step()


def test_gradients_set_to_none_are_copied_into_the_flat_vector(process_group):
    """``zero_grad(set_to_none=True)`` on the wrapped optimizer (or the model) leaves fresh ``p.grad``
    tensors after backward; step copies them in (a missing one as zero) and gives the numbers of the
    wrapper's own in-place zero_grad, and of plain SGD (one worker: gossip changes nothing)."""
    torch.manual_seed(0)
    reference = Net()
    models = [copy.deepcopy(reference) for _ in range(3)]
    sgds = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    to_none = DecentralizedOptimizer(sgds[0], models[0], topology="complete")
    in_place = DecentralizedOptimizer(sgds[1], models[1], topology="complete")
    train(models[0], lambda: sgds[0].zero_grad(set_to_none=True), to_none.step)
    train(models[1], in_place.zero_grad, in_place.step)
    train(models[2], sgds[2].zero_grad, sgds[2].step)
    assert all(p.grad is not None for p in models[0].parameters())  # the views again
    for a, b, c in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert not torch.equal(models[0].layer.weight, reference.layer.weight)
    assert to_none.bytes_sent == 0 and to_none.consensus_distance() == 0.0


def test_a_scheduler_on_the_wrapped_optimizer_sets_the_learning_rate(process_group):
    """The wrapper leaves the optimizer's own learning rates: a StepLR built on it drives them as
    it drives plain SGD."""
    torch.manual_seed(0)
    wrapped_model = Net()
    plain_model = copy.deepcopy(wrapped_model)
    wrapped_sgd, plain = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.5) for m in (wrapped_model, plain_model))
    wrapped = DecentralizedOptimizer(wrapped_sgd, wrapped_model)
    for model, optimizer, inner in [(wrapped_model, wrapped, wrapped_sgd), (plain_model, plain, plain)]:
        scheduler = torch.optim.lr_scheduler.StepLR(inner, step_size=2, gamma=0.1)

        def step(optimizer=optimizer, scheduler=scheduler) -> None:
            optimizer.step()
            scheduler.step()

        train(model, optimizer.zero_grad, step, steps=4)
    assert wrapped.param_groups[0]["lr"] == pytest.approx(0.001)
    for a, b in zip(wrapped_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_state_dict_continues_exactly(process_group):
    """Momentum state, step counter and bytes are restored: 2 + 2 steps through a checkpoint give
    the parameters of 4 uninterrupted steps."""
    torch.manual_seed(0)
    start = Net()
    straight, first = copy.deepcopy(start), copy.deepcopy(start)
    opt = DecentralizedOptimizer(torch.optim.SGD(straight.parameters(), lr=0.1, momentum=0.9), straight)
    train(straight, opt.zero_grad, opt.step, steps=4)
    batches = torch.Generator().manual_seed(0)
    opt1 = DecentralizedOptimizer(torch.optim.SGD(first.parameters(), lr=0.1, momentum=0.9), first)
    train(first, opt1.zero_grad, opt1.step, steps=2, gen=batches)
    saved, weights = copy.deepcopy(opt1.state_dict()), copy.deepcopy(first.state_dict())
    second = Net()
    opt2 = DecentralizedOptimizer(torch.optim.SGD(second.parameters(), lr=0.1, momentum=0.9), second)
    opt2.load_state_dict(saved)
    second.load_state_dict(weights)  # copies into the flat vector that the wrapper made
    assert (opt2.steps, opt2.bytes_sent) == (2, 0)
    train(second, opt2.zero_grad, opt2.step, steps=2, gen=batches)
    for a, b in zip(straight.parameters(), second.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _resume_worker(rank: int, world_size: int) -> list[list[float]]:
    """PowerGossip on 2 processes: 4 steps straight, and 2 steps, a checkpoint, a fresh model and
    wrapper loading it, 2 more; the parameters after both."""
    def run(model: nn.Module, state: dict | None, steps: int) -> DecentralizedOptimizer:
        opt = DecentralizedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model,
                                     algorithm="powergossip", iterations=2)
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            model.load_state_dict(state["model"])
        train(model, opt.zero_grad, opt.step, steps=steps, gen=batches[id(model)])
        return opt

    torch.manual_seed(rank)  # different models: gossip has work to do
    start = Net()
    straight, first, second = copy.deepcopy(start), copy.deepcopy(start), Net()
    batches = {id(straight): torch.Generator().manual_seed(rank), id(first): torch.Generator().manual_seed(rank)}
    run(straight, None, 4)
    opt = run(first, None, 2)
    state = copy.deepcopy({"optimizer": opt.state_dict(), "model": first.state_dict()})
    batches[id(second)] = batches[id(first)]
    resumed = run(second, state, 2)
    assert resumed.steps == 4 and resumed.bytes_sent == opt.bytes_sent * 2 > 0
    return [torch.nn.utils.parameters_to_vector(m.parameters()).tolist() for m in (straight, second)]


def test_state_dict_continues_powergossip_exactly_on_two_processes():
    """The checkpoint holds PowerGossip's edge vectors, the momentum and the step count: 2 + 2 steps
    through it give the parameters of 4 uninterrupted steps on both processes."""
    for straight, resumed in spawn(_resume_worker, 2, timeout=90):
        assert resumed == straight


@pytest.mark.parametrize("kwargs, message", [
    ({"algorithm": "powergosip"}, "algorithm.name: unknown algorithm 'powergosip' (did you mean 'powergossip'?)"),
    ({"algorithm": "powergossip", "iteration": 2}, "algorithm.iteration: unknown key (did you mean 'iterations'?)"),
    ({"algorithm": "dpsgd", "order": "first"}, "algorithm.order: 'first' is not allowed"),
    ({"topology": "rign"}, "topology.name: unknown topology 'rign' (did you mean 'ring'?)"),
    ({"topology": topologies.ring(4)}, "topology: ring(n=4, weights=metropolis_hastings) has 4 nodes but the "
                                       "process group has 1 processes (one worker each)"),
])
def test_bad_arguments_stop_with_one_line(process_group, kwargs, message):
    model = Net()
    with pytest.raises(ConfigError) as error:
        DecentralizedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_without_a_process_group_it_says_what_to_call():
    assert not dist.is_initialized()
    model = Net()
    with pytest.raises(RuntimeError, match=r"^DecentralizedOptimizer needs the default process group: call "
                                           r"torch.distributed.init_process_group\(\) first"):
        DecentralizedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)


def test_an_optimizer_of_other_parameters_is_refused(process_group):
    model = Net()
    with pytest.raises(ValueError, match=r"^the optimizer must step exactly the model's 3 trainable parameters; "
                                         r"it steps 1, 1 of them not the model's$"):
        DecentralizedOptimizer(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), model)
