"""embetter_plug: transformer activations as scikit-learn features and models.

Every stage is a scikit-learn estimator, so the whole flow is one ``Pipeline``::

    texts -> TransformerActivationEncoder -> LayerPooler -> tuner / classifier

Public names are imported lazily (on first attribute access), so ``import
embetter_plug`` stays cheap and does not import torch until it is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # extraction
    "TransformerActivationEncoder": "embetter_plug.encoder",
    "LayerPooler": "embetter_plug.pooler",
    "load_activations": "embetter_plug.store.io",
    "save_activations": "embetter_plug.store.io",
    "ActivationCache": "embetter_plug.store.cache",
    "load_builtin_dataset": "embetter_plug.datasets",
    "extract_distributed": "embetter_plug.store.distributed",
    "read_image_folder": "embetter_plug.inputs.image_folder",
    # models on activations (skorch)
    "PlugClassifier": "embetter_plug.models",
    "PlugRegressor": "embetter_plug.models",
    "PlugContrastiveCNN": "embetter_plug.models",
    "SupConLoss": "embetter_plug.models",
    "save_model": "embetter_plug.models",
    "load_model": "embetter_plug.models",
    # embedding-space tuners
    "FeedForwardTuner": "embetter_plug.tuners",
    "ContrastiveLearner": "embetter_plug.tuners",
    "ContrastiveTuner": "embetter_plug.tuners",
    "SbertLearner": "embetter_plug.tuners",
    "SbertTuner": "embetter_plug.tuners",
    "SentenceEncoder": "embetter_plug.tuners",
    "TransformerTuner": "embetter_plug.tuners",
    # probing
    "probe_layers": "embetter_plug.probe",
    "ProbeResults": "embetter_plug.probe",
    "OnlineProbes": "embetter_plug.probe",
    "LayerMetricDisplay": "embetter_plug.probe",
    # bulk labelling
    "LabellingMap": "embetter_plug.labelling.labelling_map",
    # inside attention
    "attention_patterns": "embetter_plug.attention.patterns",
    "attention_metrics": "embetter_plug.attention.patterns",
    "image_attention": "embetter_plug.attention.image",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover - for static type checkers and IDEs
    from .attention.patterns import attention_metrics, attention_patterns
    from .attention.image import image_attention
    from .store.cache import ActivationCache
    from .datasets import load_builtin_dataset
    from .store.distributed import extract_distributed
    from .inputs.image_folder import read_image_folder
    from .encoder import TransformerActivationEncoder
    from .store.io import load_activations, save_activations
    from .labelling.labelling_map import LabellingMap
    from .models import (PlugClassifier, PlugContrastiveCNN, PlugRegressor,
                         SupConLoss, load_model, save_model)
    from .pooler import LayerPooler
    from .probe import LayerMetricDisplay, OnlineProbes, ProbeResults, probe_layers
    from .tuners import (ContrastiveLearner, ContrastiveTuner, FeedForwardTuner,
                         SbertLearner, SbertTuner, SentenceEncoder, TransformerTuner)
