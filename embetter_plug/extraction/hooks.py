"""Capture pooled activations with torch forward hooks: one hook manager per model.

Hooks are registered once per ``(module, kind)`` of a model by its :class:`HookManager` and
routed to the :class:`Capture` running in the calling thread, so any number of threads may
extract from one model at once, each getting its own rows. A hook is removed when the last
capture that needs it ends, so between extractions the model carries no hooks (and pickles).

Each hook pools its module's ``(batch, tokens, hidden)`` output straight away, so only
``(batch, n_layers, n_parts * n_poolings, hidden)`` floats are ever kept. Once every requested
activation is in, the forward is stopped (``_StopForward``): no compute is spent on later blocks,
a pooler or an LM head. Completion counts *distinct* targets: a module that runs twice in one
forward (a dropout shared by two sublayers, say) is a clear error, never a silent wrong vector.
A module that a model deliberately reuses for several blocks (ALBERT's shared layer) is read at
the occurrence each target names.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import defaultdict
from typing import Callable, NamedTuple

from ..arch.blocks import resolve_targets  # noqa: F401  (re-exported: where targets come from)
from .token_pooling import make_pooler

__all__ = ["Capture", "HookManager", "Target", "hook_manager", "register_tap"]


class _StopForward(Exception):
    """Raised from a hook once everything requested has been captured."""


class Target(NamedTuple):
    """One activation to read: ``module``'s input (``"pre"``) or output (``"post"``) at its
    ``occurrence``-th call in a forward, stored at ``(layer_pos, part_pos)`` (``layer_pos=None``:
    a fixed module whose vector fills every layer row).

    ``fn``, when given, turns what the hook received into the pooled ``(batch, n_poolings,
    width)`` tensor itself (``fn(received, pool)``): one attention head of a projection's input,
    say. A ``kind`` other than ``"pre"``/``"post"`` names a tap registered with
    :func:`register_tap` (the attention function's inputs and output, for instance).
    ``repeats``: how many calls per forward the module makes by design (a block a model
    reuses); more than that is an error."""

    module: object
    kind: str
    layer_pos: int | None
    part_pos: int
    occurrence: int = 0
    fn: Callable | None = None
    repeats: int = 1


# kind -> attach(module, deliver) returning a handle with .remove(): sources of activations
# other than torch forward hooks (see embetter_plug.attention.tap)
_TAPS: dict[str, Callable] = {}


def register_tap(kind: str, attach: Callable) -> None:
    """Let targets of ``kind`` be read through ``attach(module, deliver)``, which must call
    ``deliver(payload)`` each time ``module`` produces what the targets read and return a
    handle whose ``remove()`` undoes the attachment."""
    _TAPS[kind] = attach


def _first_tensor(output):
    if isinstance(output, (tuple, list)):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    return output


class HookManager:
    """The hooks of one model, shared by every capture on it (see :func:`hook_manager`)."""

    def __init__(self, model):
        self._model = weakref.ref(model)
        self._lock = threading.Lock()
        self._hooks: dict[tuple[int, str], list] = {}  # key -> [handle, users]
        self._local = threading.local()
        self._users = 0
        self._training: list = []
        self._blocks: dict = {}  # id(module) -> weakref of its enclosing block (or None)

    def _hook(self, key, kind) -> Callable:
        local = self._local

        # a hook reaches the receiver of the calling thread only for the keys that receiver
        # asked for: hooks another thread's capture holds on the same model are not its own
        if kind == "pre":
            def hook(module, args, kwargs):
                route = getattr(local, "route", None)
                if route is not None and key in route[1]:
                    route[0].receive(key, args[0] if args else kwargs["hidden_states"])
        elif kind in ("post", "guard"):
            def hook(module, args, output):
                route = getattr(local, "route", None)
                if route is not None and key in route[1]:
                    route[0].receive(key, _first_tensor(output))
        else:  # a tap hands its payload as it is
            def hook(payload):
                route = getattr(local, "route", None)
                if route is not None and key in route[1]:
                    route[0].receive(key, payload)
        return hook

    @contextlib.contextmanager
    def attached(self, modules: dict):
        """Keep hooks on ``modules`` (``{(id, kind): module}``) and the model in eval mode while
        the block runs; the first user sets both up, the last one restores the model."""
        with self._lock:
            for key, module in modules.items():
                entry = self._hooks.get(key)
                if entry is None:
                    kind = key[1]
                    if kind in _TAPS:
                        handle = _TAPS[kind](module, self._hook(key, kind))
                    elif kind == "pre":
                        handle = module.register_forward_pre_hook(self._hook(key, kind),
                                                                  with_kwargs=True)
                    else:
                        handle = module.register_forward_hook(self._hook(key, kind))
                    entry = self._hooks[key] = [handle, 0]
                entry[1] += 1
            if self._users == 0:
                model = self._model()
                # inference needs eval mode; a user's model is put back as it was afterwards
                self._training = [m for m in model.modules() if m.training]
                for m in self._training:
                    m.training = False
            self._users += 1
        try:
            yield self
        finally:
            with self._lock:
                for key in modules:
                    entry = self._hooks[key]
                    entry[1] -= 1
                    if entry[1] == 0:
                        entry[0].remove()
                        del self._hooks[key]
                self._users -= 1
                if self._users == 0:
                    for m in self._training:
                        m.training = True
                    self._training = []

    def enclosing_block(self, module):
        """The block (an entry of a ``ModuleList``) that holds ``module`` strictly inside it,
        or ``None`` (``module`` is a block itself, or outside every block)."""
        import torch

        key = id(module)
        if key not in self._blocks:
            model, found = self._model(), None
            lists = [(n, m) for n, m in model.named_modules()
                     if isinstance(m, torch.nn.ModuleList)]
            path = next((n for n, m in model.named_modules(remove_duplicate=False)
                         if m is module), None)
            for name, mlist in lists:
                prefix = f"{name}." if name else ""
                if path is not None and path.startswith(prefix):
                    head, _, rest = path[len(prefix):].partition(".")
                    if rest and head.isdigit() and int(head) < len(mlist):
                        found = mlist[int(head)]
            self._blocks[key] = weakref.ref(found) if found is not None else None
        ref = self._blocks[key]
        return ref() if ref is not None else None

    def check_others(self, check: Callable) -> None:
        """Call ``check(ids)`` with the ids of the torch hooks this manager holds, while no
        capture can add or remove one (so hooks of other threads' captures are known)."""
        with self._lock:
            check({getattr(h[0], "id", None) for h in self._hooks.values()} - {None})

    @contextlib.contextmanager
    def routing(self, receiver, keys):
        """Send this thread's calls of the hooks ``keys`` (``(id(module), kind)``) to
        ``receiver.receive(key, value)`` while the block runs; calls of other hooks on the
        model (another thread's) are not passed on."""
        previous = getattr(self._local, "route", None)
        self._local.route = (receiver, frozenset(keys))
        try:
            yield
        finally:
            self._local.route = previous


_MANAGERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_MANAGERS_LOCK = threading.Lock()


def hook_manager(model) -> HookManager:
    """The one :class:`HookManager` of ``model`` (created on first use)."""
    with _MANAGERS_LOCK:
        manager = _MANAGERS.get(model)
        if manager is None:
            manager = _MANAGERS[model] = HookManager(model)
        return manager


def _module_name(model, module) -> str:
    return next((n for n, m in model.named_modules() if m is module), type(module).__name__)


class Capture:
    """Pooled activations of one forward pass at a time, for one thread.

    Parameters
    ----------
    model : torch.nn.Module
        The model whose modules the targets belong to.
    targets : list of :class:`Target` (or 4-tuples without the occurrence)
    n_layers, n_parts : int
        Size of the layer and part axes (before pooling expansion).
    poolings : list of str or float
        Token poolings; each becomes its own entry on the parts axis (part-major).
    hidden_size : int
    part_names : list of str
        For error messages.
    """

    def __init__(self, model, targets, n_layers, n_parts, poolings, hidden_size, part_names):
        self.model = model
        self.n_layers, self.n_parts = n_layers, n_parts
        self.poolings = list(poolings)
        self.hidden_size = hidden_size
        self.part_names = part_names
        self._slots: dict = defaultdict(list)  # (key, occurrence) -> [(layer_pos, part_pos)]
        self._modules: dict = {}
        self._repeats: dict = defaultdict(lambda: 1)
        self._checks: list = []  # called with (batch, tokens) before each forward
        for t in targets:
            t = Target(*t)
            key = (id(t.module), t.kind)
            self._modules[key] = t.module
            self._slots[(key, t.occurrence)].append((t.layer_pos, t.part_pos, t.fn))
            check = getattr(t.fn, "check_batch", None)
            if check is not None and check not in self._checks:
                self._checks.append(check)
            self._repeats[key] = max(self._repeats[key], t.repeats, t.occurrence + 1)

    def __enter__(self) -> "Capture":
        self._manager = hook_manager(self.model)
        # the forward stops early only once the block holding the last module read has ended:
        # a module that runs again inside it (a dropout shared by two branches) is then seen
        self._guard_of: dict = {}
        hooked = dict(self._modules)
        for key, module in self._modules.items():
            block = self._manager.enclosing_block(module)
            if block is not None:
                self._guard_of[key] = (id(block), "guard")
                hooked[(id(block), "guard")] = block
        self._hooked = hooked
        self._attached = self._manager.attached(hooked)
        self._attached.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        self._attached.__exit__(*exc)
        return False

    def receive(self, key, tensor) -> None:
        """Called by a hook of this thread: store ``tensor`` where the targets want it."""
        if key[1] == "guard":  # a block ended
            if key == self._awaiting:
                raise _StopForward
            return
        n = self._calls[key]
        self._calls[key] = n + 1
        where = self._slots.get((key, n))
        if where is None:
            if n >= self._repeats[key]:
                self._ran_twice(key, n + 1)
            return
        self._store(tensor, where)
        self._remaining -= 1
        if self._remaining == 0 and self._stop_early:
            self._awaiting = self._guard_of.get(key)
            if self._awaiting is None:
                raise _StopForward

    def _ran_twice(self, key, times):
        slots = [w for (k, _), ws in self._slots.items() if k == key for w in ws]
        part = self.part_names[slots[0][1]]
        name = _module_name(self.model, self._modules[key])
        raise RuntimeError(
            f"module {name!r} (part {part!r}) ran {times} times in one forward pass, so which of "
            "its outputs is meant is ambiguous; choose a module that runs once per forward "
            "(print(model) lists the module paths)."
        )

    def _store(self, received, where):
        k = len(self.poolings)
        plain = [w for w in where if w[2] is None]
        for li, pi, fn in where:
            if fn is not None:
                pooled = fn(received, self._pool).to(self._buf.device)
                self._buf[:, slice(None) if li is None else li, pi * k:(pi + 1) * k, :] = (
                    pooled[:, None] if li is None else pooled)
        if plain:
            self._store_plain(received, plain)

    def _store_plain(self, tensor, where):
        batch, tokens = self._shape
        if tensor.device != self._buf.device:  # a model spread over devices
            tensor = tensor.to(self._buf.device)
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
        for li, pi, _ in where:
            rows = slice(None) if li is None else li
            self._buf[:, rows, pi * k:(pi + 1) * k, :] = pooled[:, None] if li is None else pooled

    def run(self, forward: Callable[[], object], mask, *, stop_early: bool = True,
            input_ids=None, pool_mask=None, modalities=None, image_rows=None, image_units=None):
        """Call ``forward()`` with the hooks live; return ``(B, n_layers, parts*poolings, H)``.

        Use inside ``with capture:``. ``pool_mask`` (``(B, T)``, default ``mask``) limits
        mean/max/min pooling to some tokens; ``modalities`` (``{"image": (B, T), ...}``) serves
        modality-limited poolings; ``image_rows`` (the batch row of each image, in the order the
        model reads the images) and ``image_units`` (the rows or patches the tower sees for
        each) serve targets inside a vision tower. ``input_ids`` is not read: pooled vectors
        need no token ids (other sinks of the extractor's loop do).
        """
        import torch

        for check in self._checks:
            check(*mask.shape)
        self._stop_early = stop_early
        self._pool = make_pooler(mask, self.poolings, pool_mask=pool_mask, modalities=modalities)
        self._pool.image_rows, self._pool.image_units = image_rows, image_units
        self._shape = tuple(mask.shape)
        self._remaining = len(self._slots)
        self._calls: dict = defaultdict(int)
        self._awaiting = None
        self._buf = torch.zeros(
            (mask.shape[0], self.n_layers, self.n_parts * len(self.poolings), self.hidden_size),
            dtype=torch.float32, device=mask.device,
        )
        try:
            with self._manager.routing(self, self._hooked):
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
