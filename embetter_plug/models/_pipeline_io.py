"""A fitted Pipeline saved without pickle: skops for the estimators, safetensors for torch models.

The folder holds ``pipeline.skops`` (the pipeline, written by ``skops.io``) and, for every
``PlugClassifier``/``PlugRegressor``/``PlugContrastiveCNN`` step, a ``models/<step>`` folder
written by :func:`~embetter_plug.models.save_model` (``config.json`` + ``model.safetensors``).
Loading checks skops' list of the types in the file against the types this package vouches
for, plus the ones skops trusts itself (scikit-learn, NumPy, SciPy); anything else is refused
unless the caller names it in ``trusted``. An encoder anywhere inside (a FeatureUnion, a
ColumnTransformer, a grid search ...) that would run a model's own code
(``trust_remote_code=True``) or pass loading settings that are not on a small allow-list is
refused unless the caller allows it (:mod:`._load_checks`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .. import __version__

PIPELINE_FILE = "pipeline.skops"
MODELS_DIR = "models"
FORMAT = "embetter_plug.pipeline/1"
CONFIG = "config.json"


class SavedModel:
    """Stands for a torch model step stored next to the pipeline, in ``models/<name>``."""

    def __init__(self, name: str):
        self.name = name


#: types of this package (and the one torch type its encoder keeps) that hold plain data only
TRUSTED = [
    "embetter_plug.encoder.TransformerActivationEncoder",
    "embetter_plug.pooler.LayerPooler",
    "embetter_plug.layout.ActivationLayout",
    f"{__name__}.SavedModel",
    "torch.device",
]


def _swap_models(est, prefix: str, models: dict, is_model) -> Any:
    """A copy of ``est`` whose Plug model steps (nested Pipelines too) are :class:`SavedModel`."""
    if is_model(est):
        models[prefix] = est
        return SavedModel(prefix)
    steps = getattr(est, "steps", None)
    if isinstance(steps, list):
        out = copy.copy(est)
        out.steps = [(name, _swap_models(step, f"{prefix}__{name}" if prefix else name, models,
                                         is_model)) for name, step in steps]
        return out
    return est


def _restore_models(est, folder: Path, device, load_model) -> Any:
    if isinstance(est, SavedModel):
        root = (folder / MODELS_DIR).resolve()
        where = (root / str(est.name)).resolve()
        if root not in where.parents:  # a crafted name must not point elsewhere
            raise ValueError(f"the saved pipeline names a model step {est.name!r} outside "
                             f"{root}; the file was not written by save_model.")
        return load_model(where, device=device)
    steps = getattr(est, "steps", None)
    if isinstance(steps, list):
        est.steps = [(name, _restore_models(step, folder, device, load_model))
                     for name, step in steps]
    return est


def save_pipeline(pipe, path: str | Path, *, save_model, is_model) -> Path:
    """Write a fitted scikit-learn estimator or Pipeline to the folder ``path`` (see module).

    ``is_model(step)`` says which steps ``save_model(step, folder)`` stores in a folder of their
    own (given by the caller, which saves single models)."""
    import skops.io as sio
    from sklearn.base import BaseEstimator
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(pipe, BaseEstimator):
        raise TypeError(f"save_model saves fitted scikit-learn estimators and pipelines; got "
                        f"{type(pipe).__name__}.")
    check_is_fitted(pipe)
    models: dict = {}
    swapped = _swap_models(pipe, "", models, is_model)
    try:
        data = sio.dumps(swapped)
    except Exception as exc:  # skops' own errors vary by type; say what can be stored
        raise TypeError(f"save_model cannot store this {type(pipe).__name__} without pickle "
                        f"({type(exc).__name__}: {str(exc)[:200]}). Torch models are stored "
                        "as steps of a Pipeline (PlugClassifier, PlugRegressor, "
                        "PlugContrastiveCNN), and an encoder by its model's folder or hub name "
                        "(not a loaded model object). Use joblib for trusted use.") from None
    unknown = sorted(set(sio.get_untrusted_types(data=data)) - set(TRUSTED))
    if unknown:
        raise TypeError(f"save_model cannot store {unknown} in a form that loads without "
                        "pickle's risks; save those parts another way (joblib for trusted use).")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        save_model(model, path / MODELS_DIR / name)
    (path / PIPELINE_FILE).write_bytes(data)
    config = {"format": FORMAT, "embetter_plug_version": __version__, "models": sorted(models)}
    (path / CONFIG).write_text(json.dumps(config, indent=2))
    return path


def is_saved_pipeline(path: Path) -> bool:
    return (Path(path) / PIPELINE_FILE).is_file()


def load_pipeline(path: str | Path, *, load_model, device: Any = None,
                  trusted: list[str] | None = None, trust_remote_code: bool = False,
                  model_kwargs_allowed: list[str] | None = None):
    """Read a folder written by :func:`save_pipeline`, refusing types nobody vouched for, and
    remote code or loading settings nobody allowed anywhere inside (see ``_load_checks``);
    ``load_model(folder, device=...)`` reads the model steps."""
    import skops.io as sio

    from ._load_checks import check_loaded

    path = Path(path)
    data = (path / PIPELINE_FILE).read_bytes()
    found = set(sio.get_untrusted_types(data=data))
    unknown = sorted(found - set(TRUSTED) - set(trusted or []))
    if unknown:
        raise TypeError(f"{path / PIPELINE_FILE} holds types that are not trusted: {unknown}. "
                        "Loading them could run code; if you trust where the file comes from, "
                        "pass them as load_model(..., trusted=[...]).")
    pipe = sio.loads(data, trusted=sorted(found))
    check_loaded(pipe, path, trust_remote_code=trust_remote_code,
                 allowed_model_kwargs=model_kwargs_allowed)
    return _restore_models(pipe, path, device, load_model)
