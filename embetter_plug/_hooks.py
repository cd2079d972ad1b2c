"""Capture pooled activations with plain torch forward hooks, stopping the forward early.

Each hook pools its module's ``(batch, tokens, hidden)`` output straight away, so only
``(batch, n_layers, n_parts * n_poolings, hidden)`` floats are ever kept. Once every requested
activation is in, the next hook raises ``_StopForward``: no compute is spent on later blocks, a
pooler or an LM head. Hooks are always removed, also when the forward fails or is interrupted.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

from ._arch import resolve_targets  # noqa: F401  (re-exported: it moved to _arch)
from ._token_pooling import make_pooler


class _StopForward(Exception):
    """Raised from a hook once everything requested has been captured."""


def _first_tensor(output):
    if isinstance(output, (tuple, list)):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    return output


class ActivationCapture:
    """Context manager that hooks ``targets`` and fills a pooled buffer on each forward.

    Parameters
    ----------
    targets : list from :func:`resolve_targets`
    n_layers, n_parts : int
        Size of the layer and part axes (before pooling expansion).
    poolings : list of str or float
        Token poolings; each becomes its own entry on the parts axis (part-major).
    hidden_size : int
    part_names : list of str
        For error messages.
    """

    def __init__(self, targets, n_layers, n_parts, poolings, hidden_size, part_names):
        self.targets = targets
        self.n_layers, self.n_parts = n_layers, n_parts
        self.poolings = list(poolings)
        self.hidden_size = hidden_size
        self.part_names = part_names
        self._handles = []
        self._buf = None
        self._pool = None
        self._shape = (0, 0)
        self._remaining = 0

    def __enter__(self):
        groups = defaultdict(list)
        for module, kind, li, pi in self.targets:
            groups[(id(module), kind)].append((module, li, pi))
        for (_, kind), slots in groups.items():
            module = slots[0][0]
            where = [(li, pi) for _, li, pi in slots]
            if kind == "pre":
                h = module.register_forward_pre_hook(self._pre_hook(where), with_kwargs=True)
            else:
                h = module.register_forward_hook(self._post_hook(where))
            self._handles.append(h)
        self._n_hooks = len(self._handles)
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def _store(self, tensor, where):
        batch, tokens = self._shape
        if tensor.dim() == 2 and tensor.shape[0] == batch * tokens:  # flattened tokens (OPT's MLP)
            tensor = tensor.reshape(batch, tokens, -1)
        if tensor.dim() != 3 or tensor.shape[-1] != self.hidden_size:
            part = self.part_names[where[0][1]]
            raise ValueError(
                f"part {part!r} gives an output of shape {tuple(tensor.shape)}, not "
                f"(batch, tokens, {self.hidden_size}); choose a module whose output has the "
                "model's hidden size (e.g. the block, its attention or its MLP)."
            )
        pooled = self._pool(tensor)  # (B, K, H)
        k = len(self.poolings)
        for li, pi in where:
            rows = slice(None) if li is None else li
            self._buf[:, rows, pi * k:(pi + 1) * k, :] = pooled[:, None] if li is None else pooled
        self._remaining -= 1
        if self._remaining == 0 and self.stop_early:
            raise _StopForward

    def _pre_hook(self, where) -> Callable:
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self._store(hidden, where)
        return hook

    def _post_hook(self, where) -> Callable:
        def hook(module, args, output):
            self._store(_first_tensor(output), where)
        return hook

    def run(self, forward: Callable[[], object], mask, *, stop_early: bool = True):
        """Call ``forward()`` with the hooks live and return ``(B, n_layers, parts*poolings, H)``."""
        import torch

        self.stop_early = stop_early
        self._pool = make_pooler(mask, self.poolings)
        self._shape = tuple(mask.shape)
        self._remaining = self._n_hooks
        self._buf = torch.zeros(
            (mask.shape[0], self.n_layers, self.n_parts * len(self.poolings), self.hidden_size),
            dtype=torch.float32, device=mask.device,
        )
        try:
            forward()
        except _StopForward:
            pass
        if self._remaining > 0:
            raise RuntimeError(
                f"{self._remaining} hooked module(s) never ran during the forward pass; the "
                "requested parts are not on this model's forward path."
            )
        buf, self._buf, self._pool = self._buf, None, None
        return buf
