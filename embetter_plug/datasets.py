"""The built-in labelled example data set (MIT licensed, shipped inside the package)."""

from __future__ import annotations

from importlib import resources

__all__ = ["load_builtin_dataset", "builtin_dataset_path"]


def builtin_dataset_path() -> str:
    """Path of ``new_dataset.csv``: does a sentence from an ML paper announce a new data set?"""
    return str(resources.files("embetter_plug") / "data" / "new_dataset.csv")


def load_builtin_dataset(split: str | None = None):
    """Load the built-in data set as a ``pandas.DataFrame`` with columns ``text, label, split``.

    2,210 sentences from arXiv abstracts, label 1 when the sentence announces a new data set
    (13% positive). Source: github.com/koaning/embetter, MIT license (see ``data/LICENSE``).

    Parameters
    ----------
    split : {"train", "test"} or None
        Keep only that split; ``None`` returns all rows.

    Examples
    --------
    >>> from embetter_plug import load_builtin_dataset
    >>> df = load_builtin_dataset("train")
    >>> sorted(df["label"].unique().tolist())
    [0, 1]
    """
    import pandas as pd

    df = pd.read_csv(builtin_dataset_path(), keep_default_na=False)
    if split is not None:
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r} is not valid; use 'train', 'test' or None.")
        df = df[df["split"] == split].reset_index(drop=True)
    return df
