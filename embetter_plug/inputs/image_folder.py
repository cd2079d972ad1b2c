"""Labelled image folders: one folder per class (the layout of torchvision's ``ImageFolder``).

``root/<class>/<file>`` gives one sample per image file, labelled by its folder's name, as
``train/n01440764/xxx.JPEG`` in ImageNet. :func:`read_image_folder` returns the samples (with an
optional text or prompt for every image) and a DataFrame of labels; a mapping file for a label
hierarchy (a CSV ``label,parent`` or a JSON tree) adds one label column per level above the
folders. Every file is checked (its header read, nothing decoded) and the mapping too before
any model work; samples hold paths, so images are read where they are encoded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["read_image_folder", "read_hierarchy", "IMAGE_EXTENSIONS"]

#: file suffixes read as images (torchvision's ``IMG_EXTENSIONS``, in lower case)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _files(root: Path, extensions) -> list[tuple[str, Path]]:
    """``(class, file)`` in sorted class, then sorted file order (hidden names skipped)."""
    if not root.is_dir():
        raise (NotADirectoryError if root.exists() else FileNotFoundError)(
            f"image folder {str(root)!r} {'is not a folder' if root.exists() else 'does not exist'}"
            "; give a folder with one sub-folder of images per class (DIR/<class>/<file>).")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = sorted(p.name for p in root.iterdir()
                   if p.is_file() and p.suffix.lower() in extensions)
    if not classes:
        raise ValueError(f"image folder {str(root)!r} has no class folders"
                         f"{f' (only loose images such as {loose[:3]})' if loose else ''}; put "
                         "the images of each class in a sub-folder named after it "
                         "(DIR/<class>/<file>).")
    out, empty = [], []
    for c in classes:
        files = sorted(p for p in (root / c).rglob("*")
                       if p.is_file() and p.suffix.lower() in extensions
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            empty.append(c)
        out.extend((c, f) for f in files)
    if empty:
        raise ValueError(f"class folder(s) {empty[:10]} of {str(root)!r} hold no image files "
                         f"(suffixes {list(extensions)}); remove them or add images.")
    return out


def read_hierarchy(path: str | os.PathLike) -> dict[str, str]:
    """``{label: parent}`` of a mapping file: a CSV with columns ``label,parent`` or a JSON tree.

    A JSON tree is a dict from a label to its children: a dict (a subtree), a list of labels
    (leaves) or ``null`` (a leaf), e.g. ``{"animal": {"cat": ["n0212", "n0213"]}}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hierarchy file {str(path)!r} does not exist; give a CSV with "
                                "columns label,parent or a JSON tree.")
    if path.suffix.lower() == ".json":
        tree = json.loads(path.read_text())
        parents: dict[str, str] = {}

        def walk(node, parent):
            if node is None:
                return
            if isinstance(node, list):
                node = {str(k): None for k in node}
            if not isinstance(node, dict):
                raise ValueError(f"hierarchy {str(path)!r}: under {parent!r} found "
                                 f"{type(node).__name__}; a JSON tree maps labels to subtrees "
                                 "(dicts), lists of labels or null.")
            for label, sub in node.items():
                if label in parents or label == parent:
                    raise ValueError(f"hierarchy {str(path)!r}: label {label!r} appears twice.")
                if parent is not None:
                    parents[label] = parent
                else:
                    parents.setdefault(label, None)
                walk(sub, label)

        walk(tree, None)
        return {k: v for k, v in parents.items() if v is not None}
    import pandas as pd

    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"label", "parent"} <= set(df.columns):
        raise ValueError(f"hierarchy {str(path)!r} has columns {list(df.columns)}; a CSV "
                         "hierarchy has columns label,parent (one row per label and its parent).")
    dup = df["label"][df["label"].duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"hierarchy {str(path)!r}: labels {dup[:10]} have more than one "
                         "parent; give each label one row.")
    return {lab: par for lab, par in zip(df["label"], df["parent"]) if par.strip()}


def _chain(label: str, parents: dict[str, str], source: str) -> list[str]:
    """Ancestors of ``label``, the top one first (``label`` excluded)."""
    chain, node = [], label
    while node in parents:
        node = parents[node]
        if node == label or node in chain:
            raise ValueError(f"hierarchy {source!r} has a cycle through {label!r}.")
        chain.append(node)
    return chain[::-1]


def _levels(classes: list[str], hierarchy, source: str) -> dict[str, list[str]]:
    """One column per level above the folders: ``level_1`` (the top) down to the parents."""
    parents = hierarchy if isinstance(hierarchy, dict) else read_hierarchy(hierarchy)
    missing = [c for c in classes if c not in parents]
    if missing:
        raise ValueError(f"class folder(s) {missing[:10]} have no parent in the hierarchy "
                         f"{source!r} ({len(missing)} of {len(classes)}); add a row "
                         "label,parent (or a leaf in the JSON tree) for each.")
    chains = {c: _chain(c, parents, source) for c in classes}
    depth = max(map(len, chains.values()))
    # a shallower branch keeps its lowest ancestor on the deeper levels
    return {f"level_{j + 1}": [(chains[c] + [chains[c][-1]] * depth)[j] for c in classes]
            for j in range(depth)}


def read_image_folder(root: str | os.PathLike, prompt: str | None = None, hierarchy=None, *,
                      extensions=IMAGE_EXTENSIONS):
    """Samples and labels of a class-per-folder image set (``root/<class>/<file>``).

    Parameters
    ----------
    root : str or path
        A folder holding one sub-folder per class (files in nested folders of a class belong to
        it). Hidden files and folders are skipped; files are kept by suffix.
    prompt : str or None, default=None
        The text that goes with every image (a VLM's question or instruction); ``None`` gives
        images alone (a vision encoder, or a VLM's image tokens).
    hierarchy : str, path, dict or None, default=None
        A label hierarchy: a CSV with columns ``label,parent``, a JSON tree (see
        :func:`read_hierarchy`) or a ``{label: parent}`` dict. Adds columns ``level_1`` (the
        top) ... ``level_d`` (the folders' parents); a branch shallower than the deepest keeps
        its lowest ancestor on the levels below it.
    extensions : tuple of str
        File suffixes read as images (lower case, compared case-insensitively).

    Returns
    -------
    samples : list of Sample
        One per file, in sorted class then file order, each holding the file's path (read when
        encoded) and ``prompt``; checked (header read, content keyed) before any model work.
    labels : DataFrame
        ``path`` (relative to ``root``), ``label`` (the class folder's name) and the hierarchy's
        ``level_*`` columns, one row per sample.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from embetter_plug import read_image_folder
    >>> root = Path(tempfile.mkdtemp())
    >>> for c in ("cat", "dog"):
    ...     (root / c).mkdir()
    ...     Image.fromarray(np.zeros((4, 4, 3), "uint8")).save(root / c / "a.png")
    >>> samples, labels = read_image_folder(root, prompt="What is this?",
    ...                                     hierarchy={"cat": "animal", "dog": "animal"})
    >>> labels.to_dict("list")
    {'path': ['cat/a.png', 'dog/a.png'], 'label': ['cat', 'dog'], 'level_1': ['animal', 'animal']}
    >>> samples[0].text
    'What is this?'
    """
    import pandas as pd

    from .samples import check_inputs

    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise ValueError(f"prompt must be a non-empty string or None, got {prompt!r}.")
    extensions = tuple(e.lower() for e in extensions)
    root = Path(root).expanduser()
    files = _files(root, extensions)
    classes = list(dict.fromkeys(c for c, _ in files))
    frame = {"path": [f.relative_to(root).as_posix() for _, f in files],
             "label": [c for c, _ in files]}
    if hierarchy is not None:
        source = "a dict" if isinstance(hierarchy, dict) else str(hierarchy)
        per_class = _levels(classes, hierarchy, source)
        index = {c: i for i, c in enumerate(classes)}
        for name, values in per_class.items():
            frame[name] = [values[index[c]] for c, _ in files]
    samples = check_inputs([{"text": prompt, "image": f} for _, f in files],
                           name=f"image folder {str(root)!r}")
    return samples, pd.DataFrame(frame)
