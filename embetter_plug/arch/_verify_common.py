"""What the check at fit and its per-head part share: the error, the tolerances, the words.

See :mod:`embetter_plug.arch.verify`.
"""

from __future__ import annotations

from . import blocks as _arch

__all__ = ["PADDED", "VerificationError", "describe", "relative_error", "tolerance", "way_out"]

# largest relative error taken as rounding of a padded batch, per dtype of the model
PADDED = {"float32": 1e-4, "float64": 1e-6, "float16": 5e-3, "bfloat16": 3e-2}


class VerificationError(ValueError):
    """What discovery reads in the user's model disagrees with what the model returns."""


def describe(model) -> str:
    mt = getattr(_arch.text_config(model.config), "model_type", None)
    return f"{type(model).__name__} (model_type={mt!r})"


def way_out(model) -> str:
    try:
        path = _arch.find_blocks(model)[0]
    except ValueError:
        path = "<path to the blocks>"
    return (f"Pass parts as module paths instead, e.g. parts=['{path}.{{layer}}'] (print(model) "
            "lists the paths), or verify=False to skip this check.")


def relative_error(read, truth) -> float:
    read, truth = read.float(), truth.float().to(read.device)
    if read.shape != truth.shape:
        return float("inf")
    scale = float(truth.abs().max()) if truth.numel() else 0.0
    return float((read - truth).abs().max()) / max(scale, 1e-6) if truth.numel() else 0.0


def tolerance(dtype) -> float:
    """Relative error taken as rounding in ``dtype`` (a padded batch, a sum in float32)."""
    return PADDED.get(str(dtype).replace("torch.", ""), 1e-4)
