"""Pick the recipe for a labelled text set: frozen embeddings, several layers, PlugClassifier or
fine-tuning, compared by cross-validation on the training rows within a CPU budget."""

from ._recipes import Recipe, default_recipes
from .select import RecipeSelection, plan_recipes, select_recipe

__all__ = ["Recipe", "RecipeSelection", "default_recipes", "plan_recipes", "select_recipe"]
