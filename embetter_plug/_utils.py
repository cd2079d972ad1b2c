"""Small helpers shared by every estimator: device and dtype resolution, seeding, text checks."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger("embetter_plug")

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: Any = "auto") -> "torch.device":  # noqa: F821
    """Turn ``"auto"``/``None``/a name/a ``torch.device`` into a usable ``torch.device``.

    ``"auto"`` picks CUDA, then Apple MPS, then the CPU. Asking for a device that is not
    there raises a ``ValueError`` that says which devices are available.
    """
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid torch device; use 'auto', 'cpu', 'cuda', "
            "'cuda:N' or 'mps'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine "
            "(torch.cuda.is_available() is False); use device='cpu' or device='auto'."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={device!r} was requested but only {torch.cuda.device_count()} CUDA "
            "device(s) exist."
        )
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                f"device={device!r} was requested but MPS is not available; use 'cpu' or 'auto'."
            )
    return dev


def reload_device(fitted, requested) -> "torch.device":  # noqa: F821
    """Device to reload an unpickled model on: the ``fitted`` one if this machine has it, else,
    when the user ``requested`` ``"auto"``, the best one here (with a warning)."""
    try:
        return resolve_device(fitted)
    except ValueError as exc:
        if requested not in (None, "auto"):
            raise ValueError(
                f"this encoder was fitted on {fitted} (device={requested!r}), which this machine "
                f"lacks: {exc} Then fit again to reload the model there."
            ) from None
    here = resolve_device("auto")
    logger.warning("encoder fitted on %s, which this machine lacks; loading the model on %s",
                   fitted, here)
    return here


def available_ram() -> int | None:
    """Bytes of RAM the host can give without swapping, or None when it does not say.

    Read from ``psutil`` when installed, else ``MemAvailable`` in ``/proc/meminfo`` (Linux),
    else ``os.sysconf``; nothing beyond the standard library is needed.
    """
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def warn_user(message: str, category=UserWarning) -> None:
    """``warnings.warn`` pointing at the first caller outside this package (and tqdm), so the
    warning names the user's line, however deep in batch loops it was raised."""
    import sys
    import warnings

    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2
    while frame is not None and (frame.f_code.co_filename.startswith(here)
                                 or f"{os.sep}tqdm{os.sep}" in frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def resolve_dtype(dtype: Any, device: "torch.device") -> "torch.dtype":  # noqa: F821
    """``"auto"`` is float32 on CPU/MPS and bfloat16 on a CUDA GPU that supports it."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; valid values are {list(_DTYPES)}.")
    return getattr(torch, dtype)


def seed_from_random_state(random_state: Any) -> int:
    """An integer seed for torch derived from a sklearn-style ``random_state``."""
    from sklearn.utils import check_random_state

    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def check_texts(X: Any, *, name: str = "X") -> list[str]:
    """Validate a collection of texts and return it as a list of ``str``.

    Raises a ``TypeError``/``ValueError`` that names the offending positions, before any
    model work is done.
    """
    if isinstance(X, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of texts, got a single {type(X).__name__}; "
            f"wrap it in a list: [{X[:30]!r}]."
        )
    if hasattr(X, "columns") and getattr(X, "ndim", 1) == 2:  # DataFrame
        if X.shape[1] != 1:
            raise ValueError(
                f"{name} is a DataFrame with {X.shape[1]} columns; pass one text column, "
                "e.g. df['text']."
            )
        X = X.iloc[:, 0]
    if isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[1] == 1:
        X = X[:, 0]
    if isinstance(X, np.ndarray) and X.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one text per row), got an array of shape {X.shape}.")
    try:
        items: Sequence[Any] = list(X)
    except TypeError:
        raise TypeError(
            f"{name} must be an iterable of texts, got {type(X).__name__}."
        ) from None
    if len(items) == 0:
        raise ValueError(f"{name} is empty: pass at least one text.")
    bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
    if bad:
        kinds = sorted({type(items[i]).__name__ for i in bad})
        nan_like = [i for i in bad if items[i] is None
                    or type(items[i]).__name__ in ("NAType", "NaTType")  # pandas' missing values
                    or (isinstance(items[i], float) and math.isnan(items[i]))]
        hint = " (None/NaN/NA: missing values; drop or fill them first)" if nan_like else ""
        raise TypeError(
            f"{name} must contain only strings; {len(bad)} item(s) are not, at positions "
            f"{format_positions(bad)} with types {kinds}{hint}."
        )
    empty = [i for i, t in enumerate(items) if not t.strip()]
    if empty:
        raise ValueError(
            f"{name} contains {len(empty)} empty or whitespace-only text(s) at positions "
            f"{format_positions(empty)}; remove them or replace them with real text."
        )
    return [str(t) for t in items]


def format_positions(idx: list[int], limit: int = 10) -> str:
    """``[0, 3, 7]`` for messages; more than ``limit`` positions end in ``...``."""
    shown = ", ".join(map(str, idx[:limit]))
    return f"[{shown}{', ...' if len(idx) > limit else ''}]"


def resolve_indices(sel: Any, n: int, *, name: str, what: str, context: str, unit: str) -> list[int]:
    """``"all"``, an int or a list of ints (negative from the end) -> indices in ``0..n-1``.

    Used for the encoder's ``layers`` (blocks of the model) and the pooler's ``layers``/``parts``
    (positions along an axis); errors name the valid range.
    """
    from numbers import Integral

    if isinstance(sel, str):
        if sel != "all":
            raise ValueError(f"{name}={sel!r}: use 'all', an int or a list of ints.")
        return list(range(n))
    if isinstance(sel, Integral) and not isinstance(sel, bool):
        items = [sel]
    else:
        try:
            items = list(sel)
        except TypeError:
            raise TypeError(f"{name}={sel!r} is not valid; {name} takes 'all', an int or a list "
                            "of ints.") from None
    if not items:
        raise ValueError(f"{name} is an empty list; give at least one index or 'all'.")
    out = []
    for i in items:
        if not isinstance(i, Integral) or isinstance(i, bool):
            raise TypeError(f"{name} entry {i!r} is not an int; {name} takes 'all', an int or ints.")
        if not -n <= i < n:
            raise ValueError(
                f"{what} {i} is out of range: {context} has {n} {unit}, so valid {name} are "
                f"0..{n - 1} (or -{n}..-1 from the end)."
            )
        out.append(int(i) % n)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={sel!r} names the same index twice.")
    return out
