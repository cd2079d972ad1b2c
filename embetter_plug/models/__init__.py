"""Neural models on activations, built on skorch: classifiers, a regressor, a contrastive CNN."""

from .classifier import PlugClassifier
from .cnn import PlugContrastiveCNN
from .losses import SupConLoss
from .persistence import load_model, save_model
from .regressor import PlugRegressor

__all__ = ["PlugClassifier", "PlugRegressor", "PlugContrastiveCNN", "SupConLoss", "save_model",
           "load_model"]
