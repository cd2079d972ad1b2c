"""The torch plumbing every numeric tuner shares: seeded building, one training loop, pickling."""

from __future__ import annotations

import contextlib
import copy
import random
from typing import Any, Callable, Sequence

import numpy as np

from .._constraints import POSITIVE_INT, POSITIVE_REAL, Device, StrOptions
from .._utils import logger, resolve_device, seed_from_random_state

ACTIVATIONS = ("relu", "tanh", "gelu")


# What every numeric tuner accepts, in each tuner's own parameter names (see their
# ``_parameter_constraints``).
TORCH_CONSTRAINTS = {
    "learning_rate": [POSITIVE_REAL],
    "batch_size": [None, POSITIVE_INT],
    "activation": [StrOptions(set(ACTIVATIONS))],
    "random_state": ["random_state"],
    "device": [Device()],
    "verbose": ["verbose"],
}


def flatten_rows(X: Any) -> Any:
    """An n-D array (e.g. ``(n, n_layers, n_parts, hidden)`` activations) as ``(n, features)``;
    anything else is returned unchanged for ``validate_data`` to check."""
    if isinstance(X, np.ndarray) and X.ndim > 2:
        return X.reshape(len(X), -1)
    return X


def activation_module(activation: str) -> "torch.nn.Module":  # noqa: F821
    from torch import nn

    return {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[activation]()


def build_seeded(factory: Callable[[], Any], seed: int):
    """Call ``factory()`` with torch's RNG seeded, leaving the global RNG as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


@contextlib.contextmanager
def global_rng_kept(device):
    """Run the block, then put back the process-wide ``random``, NumPy and torch generators
    (CPU, and those of ``device``'s accelerator type: every CUDA device, or MPS) for code
    that reseeds them, such as transformers' ``Trainer`` (``set_seed``)."""
    import torch

    kind = device.type if device.type in ("cuda", "mps") else "cuda"
    used = device.type == kind or (kind == "cuda" and torch.cuda.is_initialized())
    devices = list(range(torch.get_device_module(kind).device_count())) if used else []
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices, device_type=kind):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def as_tensor(a: np.ndarray, device, dtype=None) -> "torch.Tensor":  # noqa: F821
    """``a`` as a tensor on ``device``; views with negative strides (``X[::-1]``) are copied,
    since torch cannot wrap them."""
    import torch

    return torch.as_tensor(np.ascontiguousarray(a, dtype=dtype), device=device)


def train_epochs(module, optimizer, loss_fn: Callable[..., Any], arrays: Sequence[np.ndarray], *,
                 epochs: int, batch_size: int | None, rng: np.random.Generator, device,
                 verbose: bool = False, desc: str = "training") -> float:
    """Run ``epochs`` shuffled mini-batch passes of ``loss_fn(module, *batch)`` over ``arrays``.

    ``arrays`` are row-aligned NumPy arrays; ``batch_size=None`` means full batch. The order of
    rows comes from ``rng`` so a seeded generator makes the run reproducible. Returns the mean
    loss of the last epoch.
    """
    import torch
    from tqdm.auto import tqdm

    tensors = [as_tensor(a, device) for a in arrays]
    n = len(arrays[0])
    step = n if batch_size is None else min(int(batch_size), n)
    module.train()
    last = float("nan")
    for epoch in tqdm(range(epochs), desc=desc, disable=not verbose, leave=False):
        order = torch.as_tensor(rng.permutation(n), device=device)
        total = 0.0
        for start in range(0, n, step):
            idx = order[start:start + step]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(module, *(t[idx] for t in tensors))
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        last = total / n
        logger.debug("%s: epoch %d/%d loss %.5f", desc, epoch + 1, epochs, last)
    module.eval()
    return last


def apply_in_batches(fn: Callable[[Any], Any], X: np.ndarray, device, batch_size: int = 4096) -> np.ndarray:
    """``fn`` on row batches of ``X`` without gradients; returns float32 NumPy."""
    import torch

    outs = []
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            xb = as_tensor(X[start:start + batch_size], device, dtype=np.float32)
            outs.append(fn(xb).float().cpu().numpy())
    return np.concatenate(outs, axis=0).astype(np.float32, copy=False)


def forget_fitted(est: Any, *attrs: str) -> None:
    """Drop fitted state so that the next ``partial_fit`` starts fresh (what ``fit`` means)."""
    for attr in attrs:
        est.__dict__.pop(attr, None)


class DeviceStateMixin:
    """Pickles record ``device_`` by name and never change the live object; on load ``device_``
    is that device where this machine has it, else the CPU."""

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: the live object stays as it is
        if "device_" in state:
            state["device_"] = str(state["device_"])
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "device_" in self.__dict__:
            self.device_ = available_or_cpu(self.device_)


def paired_cosine(E1: np.ndarray, E2: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair ``(E1[i], E2[i])`` as float32."""
    norms = np.linalg.norm(E1, axis=1) * np.linalg.norm(E2, axis=1)
    return (np.sum(E1 * E2, axis=1) / np.maximum(norms, 1e-8)).astype(np.float32)


class TorchModuleMixin(DeviceStateMixin):
    """Fitted-state handling shared by the numeric tuners.

    Keeps ``module_`` (the net), ``optimizer_`` (so ``partial_fit`` continues with its moments),
    ``device_`` and ``_rng`` (the generator behind shuffling, so a seeded stream of calls is
    reproducible). Pickles hold the net on the CPU and the optimizer as its state dict.
    """

    def _start_training(self) -> None:
        """Fresh generator and device for a new fit (parameters read now, not in ``__init__``)."""
        seed = seed_from_random_state(self.random_state)
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self.device_ = resolve_device(self.device)

    def _build(self, factory: Callable[[], Any]):
        module = build_seeded(factory, self._seed).to(self.device_)
        self.optimizer_ = None
        return module

    def _optimizer(self):
        """The AdamW optimizer over ``module_``, created once and kept across ``partial_fit`` calls;
        the current ``learning_rate``/``weight_decay`` always apply."""
        import torch

        lr = float(self.learning_rate)
        wd = float(getattr(self, "weight_decay", 0.0))
        if getattr(self, "optimizer_", None) is None:
            self.optimizer_ = torch.optim.AdamW(self.module_.parameters(), lr=lr, weight_decay=wd)
            saved = self.__dict__.pop("_optimizer_state", None)
            if saved is not None:
                self.optimizer_.load_state_dict(saved)
        for group in self.optimizer_.param_groups:
            group["lr"], group["weight_decay"] = lr, wd
        return self.optimizer_

    def __getstate__(self):
        state = super().__getstate__()
        module = state.get("module_")
        if module is not None and next(module.parameters()).device.type != "cpu":
            state["module_"] = copy.deepcopy(module).to("cpu")
        optimizer = state.pop("optimizer_", None)
        if optimizer is not None:
            state["_optimizer_state"] = to_cpu(optimizer.state_dict())
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if getattr(self, "module_", None) is not None:
            self.module_.to(self.device_)
            self.optimizer_ = None


def to_cpu(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def available_or_cpu(device):
    """The pickled device when this machine has it, else the CPU (logged)."""
    import torch

    try:
        return resolve_device(device)
    except ValueError:
        logger.warning("device %s is not available here; the unpickled tuner runs on the CPU", device)
        return torch.device("cpu")
