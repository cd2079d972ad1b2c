"""Parameter validation: scikit-learn's declarative constraints plus the package's own.

Every estimator declares ``_parameter_constraints`` (a dict ``parameter -> list of
constraints``, scikit-learn's pattern) and calls :func:`validate_estimator_params` first thing
in ``fit``; public functions are wrapped in :func:`validate_params`. A value that satisfies none
of its constraints raises scikit-learn's ``InvalidParameterError`` (a ``ValueError`` and a
``TypeError``) naming the parameter, the value given and what is valid; the package's own
constraints (part names, token poolings, layers, heads, devices, dtypes ...) add why the value
is wrong and how to fix it.

This is the only module that imports scikit-learn's private ``sklearn.utils._param_validation``;
the rest of the package imports the constraint objects from here.

Checks that need the loaded model (a part this model lacks, a layer beyond its depth) run later,
where the model is known.
"""

from __future__ import annotations

import functools
import inspect
from numbers import Integral, Real
from typing import Any, Callable

import numpy as np
from sklearn import get_config
from sklearn.utils._param_validation import (  # noqa: F401  (re-exported)
    HasMethods,
    Hidden,
    InvalidParameterError,
    Options,
    StrOptions,
    _Constraint,
    make_constraint,
)
from sklearn.utils._param_validation import Interval as _Interval

__all__ = ["HasMethods", "Hidden", "Interval", "InvalidParameterError", "Options", "StrOptions",
           "Check", "Indices", "Selection", "SubclassOf", "PartNames", "TokenPoolings", "Heads", "PromptTemplate", "Device",
           "Dtype", "CacheSpec", "CALLBACKS", "POSITIVE_INT", "NON_NEGATIVE_INT", "POSITIVE_REAL",
           "NON_NEGATIVE_REAL", "FRACTION", "validate_estimator_params", "validate_params", "validate_values"]


class Interval(_Interval):
    """scikit-learn's ``Interval`` that refuses booleans: ``True`` is not a batch size."""

    def is_satisfied_by(self, val: Any) -> bool:
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)


class Check(_Constraint):
    """A constraint satisfied when ``check(value)`` raises neither ``ValueError`` nor
    ``TypeError``; the check's own message says why a value is refused and how to fix it.

    Parameters
    ----------
    check : callable
        Called with the value; raises with a message naming the value and the valid ones.
    description : str
        What is valid, in the words of scikit-learn's messages ("a part name or a list of
        part names").
    """

    def __init__(self, check: Callable[[Any], Any], description: str):
        super().__init__()
        self.check = check
        self.description = description

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused (``None`` when it is valid)."""
        try:
            self.check(value)
        except (ValueError, TypeError) as exc:
            return str(exc)
        return None

    def is_satisfied_by(self, val: Any) -> bool:
        return self.problem(val) is None

    def __str__(self) -> str:
        return self.description


# ------------------------------------------------------------------ the package's constraints
def _check_selection(name: str, names: str | None) -> Callable[[Any], None]:
    """``"all"``, an int, a name (when ``names`` says what kind) or a non-empty list of those."""
    takes = f"'all', an int, a {names} name or a list of those" if names else \
        "'all', an int or a list of ints"

    def check(value):
        if isinstance(value, str):
            if value != "all" and not names:
                raise ValueError(f"{name}={value!r}: use {takes}.")
            return
        if isinstance(value, Integral) and not isinstance(value, bool):
            return
        try:
            items = list(value)
        except TypeError:
            raise TypeError(f"{name}={value!r} is not valid; {name} takes {takes}.") from None
        if not items:
            raise ValueError(f"{name} is an empty list; give at least one index or 'all'.")
        for i in items:
            if isinstance(i, bool) or not isinstance(i, (Integral, str) if names else Integral):
                raise TypeError(f"{name} entry {i!r} is not " + (f"a {names} name nor an int"
                                                                 if names else "an int")
                                + f"; {name} takes {takes}.")
    return check


def Indices(name: str) -> Check:
    """``"all"``, an int or a non-empty list of ints (ranges are checked against the model or
    the array later); ``name`` is the parameter's name in messages."""
    return Check(_check_selection(name, None), "'all', an int or a non-empty list of ints")


def Selection(name: str, names: str) -> Check:
    """``"all"``, an int, a name of a ``names`` or a non-empty list of those (which names
    exist is checked against the array later)."""
    return Check(_check_selection(name, names),
                 f"'all', an int, a {names} name or a non-empty list of those")


def _check_parts(parts):
    from .arch import heads as _attn_arch, vision as _vision

    _attn_arch.validate_parts(_vision.split_stack(parts)[1])


def PartNames() -> Check:
    """Part names of the encoder (``resid_post``, aliases, attention parts, ``vision.``
    prefixed ones, module paths) or a list of them."""
    return Check(_check_parts, "a part name (resid_post, attn_out, mlp_out, resid_pre, an "
                               "attention part or a module path) or a list of those")


def _check_pooling(token_pooling):
    from .extraction.token_pooling import validate_pooling

    validate_pooling(token_pooling)


def TokenPoolings() -> Check:
    """Token poolings (``"auto"``, ``"mean"``, ``"image:mean"``, a float in [0, 1] ...) or a
    list of them."""
    return Check(_check_pooling, "a token pooling name, a float in [0, 1] or a list of those")


def _check_heads(heads):
    from .arch.heads import check_heads

    check_heads(heads)


def Heads() -> Check:
    """``"all"``, a head index or a non-empty list of them (ranges checked once the model is
    loaded)."""
    return Check(_check_heads, "'all', an int or a non-empty list of ints")


def _check_template(template):
    from .extraction.batching import split_template

    split_template(template)


def PromptTemplate() -> Check:
    """``None`` or a string with exactly one ``{text}``."""
    return Check(_check_template, "None or a str with exactly one '{text}'")


def _check_device(device):
    import torch

    if device is None or isinstance(device, torch.device) or device == "auto":
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a valid torch device; use 'auto', 'cpu', "
                         "'cuda', 'cuda:N' or 'mps'.") from None


def Device() -> Check:
    """``"auto"``, ``None``, a torch device or its name (whether it is present is checked
    when it is used)."""
    return Check(_check_device, "'auto', a torch device or its name ('cpu', 'cuda', 'cuda:N', "
                                "'mps')")


DTYPES = ("auto", "float32", "bfloat16", "float16")


def _check_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype) or dtype in DTYPES:
        return
    raise ValueError(f"dtype={dtype!r} is not supported; valid values are {list(DTYPES)} or a "
                     "torch.dtype.")


def Dtype() -> Check:
    """``"auto"``, ``"float32"``, ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``."""
    return Check(_check_dtype, f"one of {list(DTYPES)} or a torch.dtype")


def _check_cache(cache):
    from .store.cache import as_cache

    if cache is not None:
        as_cache(cache)


def CacheSpec() -> Check:
    """``None``, a folder or an :class:`~embetter_plug.ActivationCache`."""
    return Check(_check_cache, "None, a folder or an ActivationCache")


def _check_callbacks(callbacks):
    from skorch.callbacks import Callback

    def is_callback(c):
        return isinstance(c, Callback) or (isinstance(c, type) and issubclass(c, Callback))

    def ok(item):
        if isinstance(item, tuple) and len(item) == 2:
            return isinstance(item[0], str) and is_callback(item[1])
        return is_callback(item)

    if callbacks is None:
        return
    if not isinstance(callbacks, (list, tuple)) or not all(ok(c) for c in callbacks):
        raise ValueError(f"callbacks={callbacks!r} is invalid; use None or a list whose entries "
                         "are skorch Callback instances (or classes) or (name, Callback) pairs.")


CALLBACKS = Check(_check_callbacks, "None or a list of skorch callbacks or (name, callback) "
                                    "pairs")

def SubclassOf(base: type, description: str) -> Check:
    """A class deriving from ``base`` (e.g. a ``torch.optim.Optimizer`` subclass)."""
    def check(value):
        if not (isinstance(value, type) and issubclass(value, base)):
            raise TypeError(f"{value!r} is not a subclass of {base.__module__}.{base.__name__}.")
    return Check(check, description)


# ------------------------------------------------------------------ common numeric ranges
POSITIVE_INT = Interval(Integral, 1, None, closed="left")
NON_NEGATIVE_INT = Interval(Integral, 0, None, closed="left")
POSITIVE_REAL = Interval(Real, 0, None, closed="neither")
NON_NEGATIVE_REAL = Interval(Real, 0, None, closed="left")
FRACTION = Interval(Real, 0, 1, closed="neither")


# ------------------------------------------------------------------ validation
def validate_values(constraints: dict, params: dict, caller: str) -> None:
    """Check ``params`` against ``constraints`` (scikit-learn's semantics: a value must satisfy
    one constraint of its list); the first refused one raises ``InvalidParameterError`` with
    scikit-learn's message plus the reasons the package's own constraints give."""
    if get_config()["skip_parameter_validation"]:
        return
    for name, value in params.items():
        listed = constraints.get(name, "no_validation")
        if isinstance(listed, str) and listed == "no_validation":
            continue
        objs = [c if isinstance(c, _Constraint) else make_constraint(c) for c in listed]
        if any(c.is_satisfied_by(value) for c in objs):
            continue
        shown = [c for c in objs if not c.hidden]
        valid = (f"{shown[0]}" if len(shown) == 1
                 else f"{', '.join(str(c) for c in shown[:-1])} or {shown[-1]}")
        reasons = [r for r in (c.problem(value) for c in objs if isinstance(c, Check)) if r]
        raise InvalidParameterError(" ".join([f"The {name!r} parameter of {caller} must be "
                                              f"{valid}. Got {value!r} instead.", *reasons]))


def validate_estimator_params(estimator) -> None:
    """Validate ``estimator``'s parameters against its ``_parameter_constraints`` (call it
    first thing in ``fit``, before any model is loaded)."""
    validate_values(type(estimator)._parameter_constraints, estimator.get_params(deep=False),
              type(estimator).__name__)


def validate_params(constraints: dict) -> Callable:
    """Decorator: validate a public function's arguments against ``constraints`` before its
    body runs (scikit-learn's ``validate_params`` with the package's messages)."""

    def decorator(func):
        sig = inspect.signature(func)
        unknown = set(constraints) - set(sig.parameters)
        if unknown:
            raise ValueError(f"constraints of {func.__qualname__} name {sorted(unknown)}, "
                             "which it does not take.")

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            validate_values(constraints, {k: v for k, v in bound.arguments.items() if k in constraints},
                      func.__qualname__)
            return func(*args, **kwargs)

        wrapper._parameter_constraints = constraints
        return wrapper

    return decorator
