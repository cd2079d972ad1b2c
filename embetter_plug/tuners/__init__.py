"""Embedding-space tuners: reshape an embedding space toward your labels inside a Pipeline.

- :class:`FeedForwardTuner`: the hidden layer of a small classifier as the new embedding.
- :class:`ContrastiveLearner` / :class:`ContrastiveTuner`: a shared embedding head trained on
  similar/dissimilar pairs (given, or made from labels).
- :class:`SbertLearner` / :class:`SbertTuner`: fine-tune a sentence-transformers model on pairs.
- :class:`SentenceEncoder`: sentence-transformers embeddings as a transformer.
- :class:`TransformerTuner`: fine-tune the transformer itself on labels, with a linear head.
"""

from .contrastive import ContrastiveLearner, ContrastiveTuner
from .feedforward import FeedForwardTuner
from .finetune import TransformerTuner
from .sbert import SbertLearner, SbertTuner
from .sentence import SentenceEncoder

__all__ = ["FeedForwardTuner", "ContrastiveLearner", "ContrastiveTuner", "SbertLearner",
           "SbertTuner", "SentenceEncoder", "TransformerTuner"]
