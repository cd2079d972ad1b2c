"""save_model / load_model: weights as safetensors, parameters and fitted state as JSON.

Loading reads only JSON and safetensors (no pickle), so a saved model from an untrusted source
cannot run code. A whole fitted Pipeline (this package's estimators and scikit-learn's) is
saved with skops next to its torch models' safetensors (:mod:`._pipeline_io`). Ordinary
``pickle``/``joblib`` of the estimators also works, for trusted use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.utils.validation import check_is_fitted

from .. import __version__
from .._utils import logger, resolve_device
from .training import _plain
from .classifier import PlugClassifier
from .cnn import PlugContrastiveCNN
from .regressor import PlugRegressor

__all__ = ["save_model", "load_model"]

_CLASSES = {c.__name__: c for c in (PlugClassifier, PlugRegressor, PlugContrastiveCNN)}
_FORMAT = "embetter_plug.model/1"


def _self_saving() -> dict:
    """Models whose folders hold a whole transformer (imported when first needed)."""
    from ..tuners.finetune import TransformerTuner

    return {"TransformerTuner": TransformerTuner}


def is_saved_as_model(est) -> bool:
    """Whether ``est`` is stored by :func:`save_model` in a folder of its own (in a Pipeline:
    ``models/<step>``), not by skops."""
    name = type(est).__name__
    for registry in (_CLASSES, _self_saving()):
        if type(est) is registry.get(name):
            return True
    return False
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_model(model, path: str | Path) -> Path:
    """Save a fitted model to the folder ``path`` (``config.json`` + ``model.safetensors``).

    Parameters that JSON cannot hold (``callbacks``, a ``RandomState``) are stored as ``None``;
    an optimizer class from ``torch.optim`` is stored by name. Training history is not saved.

    Any other fitted scikit-learn estimator or Pipeline of this package's estimators
    (``TransformerActivationEncoder``, ``LayerPooler``, the models above) and scikit-learn's is
    saved with skops (``pipeline.skops``), its torch models as above in ``models/<step>``;
    parts that skops cannot store without pickle are refused. The encoder stores where its
    model comes from (a folder or hub name), not the weights.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from embetter_plug import PlugClassifier, save_model, load_model
    >>> X = np.random.default_rng(0).normal(size=(30, 8)).astype("float32")
    >>> y = np.array(["a", "b", "c"] * 10)
    >>> clf = PlugClassifier(max_epochs=2, random_state=0, n_jobs=1).fit(X, y)
    >>> folder = save_model(clf, tempfile.mkdtemp())
    >>> bool((load_model(folder).predict_proba(X) == clf.predict_proba(X)).all())
    True
    """
    name = type(model).__name__
    if name in _self_saving():
        from ..tuners.finetune_io import save_tuner

        check_is_fitted(model, "net_")
        header = {"format": _FORMAT, "embetter_plug_version": __version__, "estimator": name}
        return save_tuner(model, Path(path), header, _json_param)
    if name not in _CLASSES:
        from ._pipeline_io import save_pipeline

        return save_pipeline(model, path, save_model=save_model, is_model=is_saved_as_model)
    check_is_fitted(model, "net_")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    classes = getattr(model, "classes_", None)
    class_weight = getattr(model, "class_weight_", None)
    config = {
        "format": _FORMAT,
        "embetter_plug_version": __version__,
        "estimator": name,
        "params": {k: _json_param(k, v) for k, v in model.get_params(deep=False).items()},
        "fitted": {
            "input_shape": list(model.input_shape_),
            "n_features_in": int(model.n_features_in_),
            "feature_names_in": (model.feature_names_in_.tolist()
                                 if hasattr(model, "feature_names_in_") else None),
            "module_kwargs": model.module_kwargs_,
            "classes": None if classes is None else classes.tolist(),
            "classes_dtype": None if classes is None else classes.dtype.str if classes.dtype != object else "object",
            "class_weight": None if class_weight is None else [float(w) for w in class_weight],
            "best_epoch": int(model.best_epoch_),
            "n_epochs": int(model.n_epochs_),
        },
    }
    text = json.dumps(config, indent=2, default=_json_scalar)  # fails before anything is written
    state = {k: v.detach().cpu().contiguous() for k, v in model.net_.module_.state_dict().items()}
    save_file(state, str(path / WEIGHTS), metadata={"format": _FORMAT})
    (path / CONFIG).write_text(text)
    return path


def load_model(path: str | Path, *, device: Any = None, trusted: list[str] | None = None,
               trust_remote_code: bool = False, model_kwargs_allowed: list[str] | None = None):
    """Load a model or pipeline saved by :func:`save_model`; ``device`` overrides the saved one.

    A pipeline's file may hold only types that this package or skops vouch for; ``trusted``
    adds type names (``"module.Class"``) you trust after reviewing them. An encoder anywhere in
    it (a step, inside a FeatureUnion, a ColumnTransformer or a grid search) saved with
    ``trust_remote_code=True`` is refused unless ``trust_remote_code=True`` is passed here. Its
    ``model_kwargs`` (passed to ``from_pretrained``) are taken as they are only for placement
    and precision settings (``device_map``, ``dtype``, ``attn_implementation`` of
    transformers' own kernels ...) and config overrides holding numbers; other keys (such as
    ``code_revision``, ``weights_only`` or ``subfolder``) are refused unless named in
    ``model_kwargs_allowed`` after reviewing them.
    """
    from ._pipeline_io import is_saved_pipeline, load_pipeline

    path = Path(path)
    if is_saved_pipeline(path):
        return load_pipeline(path, load_model=load_model, device=device, trusted=trusted,
                             trust_remote_code=trust_remote_code,
                             model_kwargs_allowed=model_kwargs_allowed)
    cfg_file, weights = path / CONFIG, path / WEIGHTS
    if not cfg_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{path} is not a saved model: expected {CONFIG} and {WEIGHTS} in it.")
    config = json.loads(cfg_file.read_text())
    if config.get("format") == _FORMAT and config.get("estimator") in _self_saving():
        from ..tuners.finetune_io import load_tuner

        return load_tuner(_self_saving()[config["estimator"]], path, config, device)
    if config.get("format") != _FORMAT or config.get("estimator") not in _CLASSES:
        raise ValueError(f"{cfg_file} is not a model saved by embetter_plug.save_model "
                         f"(format {config.get('format')!r}, estimator {config.get('estimator')!r}).")
    params = dict(config["params"])
    if isinstance(params.get("optimizer"), dict):
        params["optimizer"] = _optimizer_from_name(params["optimizer"]["torch.optim"])
    if isinstance(params.get("class_weight"), dict):
        params["class_weight"] = {k: v for k, v in params["class_weight"]["__items__"]}
    if device is not None:
        params["device"] = device
    model = _CLASSES[config["estimator"]](**params)
    fitted = config["fitted"]
    model.input_shape_ = tuple(fitted["input_shape"])
    model.n_features_in_ = fitted["n_features_in"]
    if fitted.get("feature_names_in") is not None:
        model.feature_names_in_ = np.asarray(fitted["feature_names_in"], dtype=object)
    model.module_kwargs_ = dict(fitted["module_kwargs"])
    if fitted["classes"] is not None:
        model.classes_ = np.asarray(fitted["classes"], dtype=object if fitted["classes_dtype"] == "object"
                                    else np.dtype(fitted["classes_dtype"]))
        model.class_weight_ = (None if fitted["class_weight"] is None
                               else np.asarray(fitted["class_weight"], dtype=np.float32))
    model.best_epoch_, model.n_epochs_ = fitted["best_epoch"], fitted["n_epochs"]
    model.validation_indices_ = None
    model.device_ = resolve_device(model.device)
    net = model._make_net(device=model.device_)
    net.initialize()
    net.module_.load_state_dict(load_file(str(weights), device=str(model.device_)))
    model.net_ = net
    return model


def _json_param(key: str, value: Any) -> Any:
    if isinstance(value, type) and issubclass(value, torch.optim.Optimizer):
        return {"torch.optim": value.__name__}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):  # class_weight
        return {"__items__": [[_plain(k), float(v)] for k, v in value.items()]}
    try:
        json.dumps(value)
        return value
    except TypeError:
        logger.warning("save_model: parameter %s=%r cannot be stored as JSON; it is saved as None.",
                       key, value)
        return None


def _json_scalar(v: Any) -> Any:
    """``json.dumps`` fallback: NumPy scalars (e.g. ``module__hidden_units=np.int64(16)``)."""
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"Object of type {type(v).__name__} is not JSON serializable")


def _optimizer_from_name(name: str):
    opt = getattr(torch.optim, name, None)
    if not (isinstance(opt, type) and issubclass(opt, torch.optim.Optimizer)):
        raise ValueError(f"optimizer {name!r} in the saved config is not a torch.optim optimizer.")
    return opt
