"""An encoder for the Ray tests: counts the texts of every forward pass in the actors, and can
fail or kill its actor once on request. Shipped to the actors by value (``register``)."""

from __future__ import annotations

import os

from embetter_plug import TransformerActivationEncoder

COUNTS = "EMBETTER_PLUG_TEST_COUNTS"  # environment variable of the actors: a file to append to


class CountingEncoder(TransformerActivationEncoder):
    """Appends the number of distinct texts of every call (what the model runs on: the encoder
    computes each distinct text once) to ``$EMBETTER_PLUG_TEST_COUNTS``.

    When ``<that file>.fail`` exists, the first forward to remove it raises ``RuntimeError``;
    when ``<that file>.die`` exists, the first forward to remove it ends its process at once.
    """

    def encode(self, texts):
        path = os.environ.get(COUNTS)
        if path:
            if _claim(path + ".die"):
                os._exit(1)
            if _claim(path + ".fail"):
                raise RuntimeError("a forward pass made to fail once")
            with open(path, "a") as f:
                f.write(f"{len(set(texts))}\n")
        return super().encode(texts)


def _claim(marker: str) -> bool:
    try:
        os.remove(marker)
        return True
    except FileNotFoundError:
        return False


def counted(path) -> list[int]:
    """Texts per forward pass recorded in ``path`` (empty when none ran)."""
    try:
        return [int(x) for x in open(path).read().split()]
    except FileNotFoundError:
        return []


def register() -> None:
    """Let Ray workers unpickle this module's classes without importing it from ``tests/``."""
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
