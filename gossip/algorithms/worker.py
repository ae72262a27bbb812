"""One worker: its model with all parameters in one flat vector, its optimizer and its randomness.

The parameters of a worker's model are views into one contiguous vector ``params`` (and their
gradients views into ``grads``), so that gossip can read and write a whole model as one tensor
while the model computes as usual. Parameters with one dimension (biases, norm scales) and the
others are told apart by ``views``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gossip.algorithms.optim import OptimizerConfig, build_optimizer
from gossip.comm.seeding import seed_for


class Worker:
    """A worker's model, flat parameter/gradient vectors, local optimizer and random state.

    ``optimizer`` is an :class:`OptimizerConfig` (the worker builds the optimizer it names and clips as it says)
    or a ``torch.optim`` optimizer over exactly the model's trainable parameters, used as is (no
    clipping). Either way :attr:`optimizer` is a torch optimizer; it steps the parameters, whose
    ``.grad`` are the views into ``grads``.
    """

    def __init__(self, worker_id: int, model: nn.Module, optimizer: OptimizerConfig | torch.optim.Optimizer,
                 seed: int, device: torch.device | str = "cpu") -> None:
        self.id = worker_id
        self.device = torch.device(device)
        self.model = model.to(self.device)
        if isinstance(optimizer, torch.optim.Optimizer):
            _check_optimizer_parameters(optimizer, self.model)
            self.optimizer: torch.optim.Optimizer = optimizer
            self.clip_norm: float | None = None
            self.clip_scope = "worker"
        else:
            self.optimizer = build_optimizer(optimizer, self.model)
            self.clip_norm, self.clip_scope = optimizer.clip_norm, optimizer.clip_scope
        self.names, self.views, self.params, self.grads = flatten_parameters(self.model)
        self.memory: dict[str, Any] = {}
        self.rng_state = _seeded_rng_state(seed_for(seed, "worker", worker_id), self.device)

    def clip_grads_(self) -> None:
        """Scale ``grads`` in place so that their norm is at most ``clip_norm`` (as torch's
        ``clip_grad_norm_``); nothing without a ``clip_norm``."""
        if self.clip_norm is not None:
            self.grads.mul_((self.clip_norm / (self.grads.norm() + 1e-6)).clamp(max=1.0))

    def forked_rng(self) -> "_WorkerRNG":
        """A context in which torch's global generator is this worker's own (for dropout etc.)."""
        return _WorkerRNG(self)

    def state_dict(self) -> dict[str, Any]:
        return {"params": self.params, "buffers": {k: v for k, v in self.model.named_buffers()},
                "optimizer": self.optimizer.state_dict(), "rng_state": self.rng_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.params.copy_(state["params"])
        for name, buffer in self.model.named_buffers():
            buffer.copy_(state["buffers"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng_state = state["rng_state"]


def flatten_parameters(model: nn.Module) -> tuple[list[str], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Move ``model``'s parameters (and gradients) into flat vectors and make them views.

    Returns the parameter names, the views (shaped like the parameters), the flat parameter
    vector and the flat gradient vector.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    dtype = named[0][1].dtype
    params = torch.cat([p.detach().reshape(-1).to(dtype) for _, p in named])
    grads = torch.zeros_like(params)
    views = []
    offset = 0
    for _, p in named:
        count = p.numel()
        p.data = params[offset:offset + count].view_as(p)
        p.grad = grads[offset:offset + count].view_as(p)
        views.append(p.data)
        offset += count
    return [name for name, _ in named], views, params, grads


def _check_optimizer_parameters(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Refuse an optimizer that does not step exactly ``model``'s trainable parameters."""
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if stepped != trainable:
        raise ValueError(f"the optimizer must step exactly the model's {len(trainable)} trainable parameters; "
                         f"it steps {len(stepped)}, {len(stepped - trainable)} of them not the model's")


def _seeded_rng_state(seed: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen.get_state()


class _WorkerRNG:
    """Swap torch's default generator state for the worker's and back."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.cuda = worker.device.type == "cuda"

    def __enter__(self) -> None:
        self.saved = torch.cuda.get_rng_state(self.worker.device) if self.cuda else torch.get_rng_state()
        if self.cuda:
            torch.cuda.set_rng_state(self.worker.rng_state, self.worker.device)
        else:
            torch.set_rng_state(self.worker.rng_state)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.worker.rng_state = torch.cuda.get_rng_state(self.worker.device)
            torch.cuda.set_rng_state(self.saved, self.worker.device)
        else:
            self.worker.rng_state = torch.get_rng_state()
            torch.set_rng_state(self.saved)
