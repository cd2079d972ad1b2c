"""The examples in every public docstring run and print what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import embetter_plug

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(embetter_plug.__path__, "embetter_plug.")
    if not m.name.split(".")[-1].startswith("__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
