"""The axes of an activation array: ``(sample, layer, part, hidden)``."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

__all__ = ["ActivationLayout", "Activations", "PartName", "layer_positions", "select_positions"]


@dataclass(frozen=True)
class ActivationLayout:
    """Names along the axes of a ``(n_samples, n_layers, n_parts, hidden_size)`` array.

    Parameters
    ----------
    layers : tuple of int
        Model layer (block) index of each position on the layer axis.
    parts : tuple of str
        Name of each position on the part axis, e.g. ``"resid_post"`` or ``"mlp_out@mean"``.
    hidden_size : int
    meta : dict
        How the activations were made (model, token pooling, dtype, ...), JSON-serialisable.

    Examples
    --------
    >>> from embetter_plug.layout import ActivationLayout
    >>> lay = ActivationLayout(layers=(0, 5), parts=("resid_post",), hidden_size=2)
    >>> lay.feature_names()
    ['layer0__resid_post__0', 'layer0__resid_post__1', 'layer5__resid_post__0', 'layer5__resid_post__1']
    """

    layers: tuple[int, ...]
    parts: tuple[str, ...]
    hidden_size: int
    meta: dict = field(default_factory=dict, compare=False)

    dims = ("sample", "layer", "part", "hidden")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one sample: ``(n_layers, n_parts, hidden_size)``."""
        return (len(self.layers), len(self.parts), self.hidden_size)

    def feature_names(self) -> list[str]:
        """Names of the flattened (C-order) features, ``layer{l}__{part}__{i}``."""
        return [
            f"layer{l}__{p}__{i}" for l in self.layers for p in self.parts
            for i in range(self.hidden_size)
        ]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"], d["parts"] = list(self.layers), list(self.parts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ActivationLayout":
        return cls(layers=tuple(int(x) for x in d["layers"]), parts=tuple(d["parts"]),
                   hidden_size=int(d["hidden_size"]), meta=dict(d.get("meta", {})))

    def check(self, X: np.ndarray) -> None:
        """Raise if ``X`` does not have this layout's shape."""
        if X.ndim != 4 or tuple(X.shape[1:]) != self.shape:
            raise ValueError(
                f"array of shape {X.shape} does not match the layout (n, {', '.join(map(str, self.shape))})."
            )


def layer_positions(sel: Any, blocks: list | None, n_layers: int, *, owner: str) -> list[int]:
    """Positions on the layer axis of the model blocks ``sel`` names (``layers`` is always
    block indices).

    ``blocks`` are the block indices along the axis, from the layout that describes the array;
    ``None`` when there is none (a plain array: the encoder's output after ``np.asarray``, a
    slice along the layer or part axis such as ``X[:, 1:]``, or a copy made elsewhere). Then
    ``"all"`` selects every position, and any other selection is refused: which position holds
    which block is unknown, and reading the indices as positions would pick other blocks.
    ``owner`` names who asks, for the message (``"LayerPooler"``, ``"probe_layers"``).
    """
    if blocks is not None:
        return select_positions(sel, list(blocks), name="layers", what="layer")
    if isinstance(sel, str) and sel == "all":
        return list(range(n_layers))
    raise ValueError(
        f"{owner}: layers={sel!r} are model block indices, but the input is a plain array "
        f"with {n_layers} position(s) on its layer axis and no layout, so which position "
        "holds which block is unknown (the encoder's output loses its layout when converted, "
        "e.g. np.asarray(X), or sliced along the layer or part axis, e.g. X[:, 1:]). Keep the "
        "encoder's output as it is, pass layout= with the ActivationLayout that describes this "
        "array (the encoder's layout_ for its whole output), or take the positions yourself "
        "(X[:, [0, 2]]) and use layers='all'.")


def select_positions(sel: Any, labels: list, *, name: str, what: str) -> list[int]:
    """Positions along an axis of the items ``sel`` names.

    For layers (``what="layer"``) ``labels`` are model block indices: an int is a block index,
    a negative one counts back from the last block present. For parts, a string is a part name
    (aliases such as ``rs`` allowed; an attention part such as ``attn_result`` selects all its
    per-head entries ``attn_result.h0``, ...) and an int a position on the part axis. ``"all"`` selects
    everything. An item that is not there is an error naming what is.
    """
    from numbers import Integral

    from .arch.blocks import canonical_part

    if isinstance(sel, str) and sel == "all":
        return list(range(len(labels)))
    items = [sel] if isinstance(sel, (str, Integral)) else list(sel)
    if not items:
        raise ValueError(f"{name} is empty; give at least one {what} or 'all'.")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, Integral)):
            raise TypeError(f"{name} entry {item!r} is neither a {what} name nor an int.")
        if what == "layer":
            if isinstance(item, str):
                raise TypeError(f"layers are model block indices (ints), got {item!r}.")
            if item in labels:
                out.append(labels.index(item))
            elif -len(labels) <= item < 0:
                out.append(len(labels) + int(item))
            else:
                raise ValueError(f"block {item} is not in the input; it holds blocks {labels} "
                                 "(layers are model block indices; -1 is the last one present).")
        elif isinstance(item, str):
            canon = canonical_part(item)
            heads = _head_entries(canon, labels)
            if heads and canon not in labels:  # "attn_result": every head's entry
                out.extend(heads)
                continue
            if canon not in labels and item not in labels:
                raise ValueError(f"part {item!r} is not in the input; its parts are {labels} "
                                 f"(or positions 0..{len(labels) - 1}).")
            out.append(labels.index(item if item in labels else canon))
        elif -len(labels) <= item < len(labels):
            out.append(int(item) % len(labels))
        else:
            raise ValueError(f"part position {item} is out of range: the input has "
                             f"{len(labels)} parts {labels}.")
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={sel!r} names the same {what} twice.")
    return out


def _head_entries(part: str, labels: list) -> list[int]:
    """Positions of the per-head entries (``attn_z.h3``, ``attn_z.h3@mean``) of ``part``."""
    heads = [(i, PartName.parse(label)) for i, label in enumerate(labels) if isinstance(label, str)]
    return [i for i, name in heads if name.head is not None and name.part == part]


def _rows_only(key) -> bool:
    """Whether indexing with ``key`` selects rows and keeps every other axis whole."""
    if isinstance(key, tuple):
        return len(key) >= 1 and _rows_only(key[0]) and all(
            k is Ellipsis or (isinstance(k, slice) and k == slice(None)) for k in key[1:])
    if isinstance(key, (slice, list)):
        return True
    return isinstance(key, np.ndarray) and key.ndim == 1


class Activations(np.ndarray):
    """The encoder's 4-D output: a NumPy array that also carries its ``layout`` and the
    ``index`` of the texts it came from (a pandas input's index, else ``None``).

    A later step such as :class:`~embetter_plug.LayerPooler` reads them to name its features by
    model layer and part and to keep the texts' index under ``set_output(transform="pandas")``.
    Selecting rows (``X[train]``, as cross-validation does) keeps both, for those rows; any
    other view, copy or result computed from it carries neither (both are ``None``): they would
    no longer describe its axes. A pickled copy (as joblib sends to workers) keeps both.
    """

    layout: ActivationLayout | None = None
    index: Any = None

    @classmethod
    def of(cls, array: np.ndarray, layout: ActivationLayout, index: Any = None) -> "Activations":
        out = np.asarray(array).view(cls)
        out.layout = layout
        out.index = index if index is not None and len(index) == len(out) else None
        return out

    def __array_finalize__(self, obj) -> None:
        self.layout = None
        self.index = None

    def __reduce__(self):
        # a copy sent to a worker (pickle, joblib) keeps the names of its axes
        rebuild, args, state = super().__reduce__()
        return rebuild, args, (state, self.layout, self.index)

    def __setstate__(self, state) -> None:
        if len(state) == 3 and isinstance(state[0], tuple):  # (array's state, layout, index)
            state, self.layout, self.index = state
        super().__setstate__(state)  # else a plain array's state, pickled without them

    def __getitem__(self, key):
        out = super().__getitem__(key)
        if (isinstance(out, Activations) and self.layout is not None and out.ndim == 4
                and out.shape[1:] == self.shape[1:] and _rows_only(key)):
            out.layout = self.layout
            if self.index is not None:
                try:
                    out.index = self.index[key[0] if isinstance(key, tuple) else key]
                except (IndexError, KeyError, TypeError, ValueError):
                    out.index = None
        return out


@dataclass(frozen=True)
class PartName:
    """One name on the part axis, ``[vision.]part[.hN][@pooling]``, parsed once into its four
    coordinates.

    Parameters
    ----------
    stack : {None, "vision"}
        ``"vision"`` for a part of a vision-language model's vision tower (``vision.`` in the
        name); ``None`` for the model's language stack (or a vision encoder's only stack).
    part : str
        A part (``resid_post``, ``attn_result``, ``attn_entropy``) or a module path.
    head : int or None, default=None
        The head of a per-head attention entry (``attn_result.h3``).
    pooling : str or None, default=None
        The token pooling, where the part axis holds several (``mlp_out@mean``,
        ``resid_post@image0:mean``, ``resid_post@pos0.5``).

    Examples
    --------
    >>> from embetter_plug.layout import PartName
    >>> name = PartName.parse("attn_result.h3@text:mean")
    >>> name
    PartName(stack=None, part='attn_result', head=3, pooling='text:mean')
    >>> str(name.without_pooling())
    'attn_result.h3'
    >>> PartName.parse("vision.mlp_out").stack
    'vision'
    """

    stack: str | None
    part: str
    head: int | None = None
    pooling: str | None = None

    STACKS: ClassVar[tuple] = ("vision",)
    FORM: ClassVar[str] = "[vision.]part[.hN][@pooling]"
    _HEAD: ClassVar = re.compile(r"^(attn_[a-z_]+)\.h(\d+)$")

    def __post_init__(self):
        if self.stack is not None and self.stack not in self.STACKS:
            raise ValueError(f"stack={self.stack!r}: a part is read from the language stack "
                             f"(None) or from {list(self.STACKS)}.")
        if not isinstance(self.part, str) or not self.part or "@" in self.part:
            raise ValueError(f"part={self.part!r}: give a non-empty part name without '@'.")
        if self.head is not None and (isinstance(self.head, bool) or not isinstance(
                self.head, int) or self.head < 0):
            raise ValueError(f"head={self.head!r}: give a head index (an int >= 0) or None.")
        if self.pooling is not None and (not isinstance(self.pooling, str) or not self.pooling
                                         or "@" in self.pooling):
            raise ValueError(f"pooling={self.pooling!r}: give a pooling name or None.")

    @classmethod
    def parse(cls, name) -> "PartName":
        """The coordinates of ``name`` (a :class:`PartName` is returned as it is); a name that
        is not of the form ``[vision.]part[.hN][@pooling]`` is a ``ValueError`` naming it."""
        if isinstance(name, cls):
            return name
        if not isinstance(name, str):
            raise TypeError(f"a part name is a string, got {name!r} "
                            f"({type(name).__name__}).")
        body, at, pooling = name.partition("@")
        stack = next((s for s in cls.STACKS if body.startswith(s + ".")), None)
        if stack is not None:
            body = body[len(stack) + 1:]
        match = cls._HEAD.match(body)
        try:
            return cls(stack, match.group(1) if match else body,
                       int(match.group(2)) if match else None, pooling if at else None)
        except ValueError:
            raise ValueError(
                f"part name {name!r} is not of the form {cls.FORM} (e.g. 'resid_post', "
                "'vision.mlp_out', 'attn_result.h3', 'mlp_out@mean'): the part and a pooling "
                "after '@' must not be empty, and '@' comes once.") from None

    def __str__(self) -> str:
        return "".join((f"{self.stack}." if self.stack else "", self.part,
                        "" if self.head is None else f".h{self.head}",
                        "" if self.pooling is None else f"@{self.pooling}"))

    def without_pooling(self) -> "PartName":
        """The same entry without its token pooling."""
        return replace(self, pooling=None)
