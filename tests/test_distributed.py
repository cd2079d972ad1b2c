"""Extraction on a local Ray cluster: equals in-process extraction, dedups per block, survives a
failed task, a killed actor and a killed driver, and refuses bad input before a model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embetter_plug import load_activations
from embetter_plug.io import DATA, MANIFEST
from embetter_plug.testing import make_tiny_model

pytest.importorskip("ray.data")

from _ray_helpers import CountingEncoder, counted  # noqa: E402

ACTOR = {"concurrency": 2, "num_cpus": 0.5}  # two actors still leave a CPU to Ray Data's tasks


@pytest.fixture(scope="module")
def distinct():
    from embetter_plug import load_builtin_dataset

    return list(dict.fromkeys(load_builtin_dataset()["text"]))[:30]


@pytest.fixture(scope="module")
def enc():
    model, tok = make_tiny_model("gpt2")
    return CountingEncoder(model, tok, parts=["resid_post", "mlp_out"], batch_size=4).fit()


@pytest.fixture
def counts(ray_cluster):
    path = ray_cluster.counts
    for p in (path, path.with_name(path.name + ".fail"), path.with_name(path.name + ".die")):
        p.unlink(missing_ok=True)
    return path


def test_equals_in_process_extraction_in_input_order_and_dedups_per_block(enc, distinct, counts,
                                                                          tmp_path):
    from embetter_plug.distributed import extract_distributed

    texts = [t for t in distinct for _ in range(2)]  # every text twice, side by side
    ref = enc.transform(texts)  # in-process, in memory
    folder = extract_distributed(enc, tmp_path / "o", texts, batch_size=4, shard_size=12,
                                 **ACTOR)
    X, layout = load_activations(folder)
    assert isinstance(X, np.memmap) and X.shape == (60, 3, 2, 32)
    assert layout == enc.layout_
    np.testing.assert_allclose(X, ref, rtol=1e-5, atol=1e-6)
    man = json.loads((folder / MANIFEST).read_text())
    assert (man["n_done"], man["n_shards"], "done_after" in man) == (5, 5, False)
    # blocks of 4 consecutive rows hold 2 distinct texts each: each is forwarded once
    assert counted(counts) == [2] * 15
    # the folder is the streamed-extraction one: extract_to finds it complete, computes nothing
    enc.extract_to(folder, texts, shard_size=12)
    assert len(counted(counts)) == 15


def test_a_failed_task_keeps_finished_shards_and_a_rerun_with_a_killed_actor_completes(
        enc, distinct, counts, tmp_path):
    """The first run stops at a forward made to fail; the rerun (other block size: blocks
    straddle shards) computes only unfinished shards while one actor process exits mid-task,
    which Ray restarts and retries."""
    from embetter_plug.distributed import extract_distributed

    texts = distinct[:30]
    counts.with_name(counts.name + ".fail").touch()
    with pytest.raises(Exception, match="made to fail once"):
        extract_distributed(enc, tmp_path / "o", texts, batch_size=3, shard_size=6, **ACTOR)
    man = json.loads((tmp_path / "o" / MANIFEST).read_text())
    complete = set(range(man["n_done"])) | set(man.get("done_after", []))
    assert len(complete) < 5
    ref = enc.transform(texts)
    data = np.load(tmp_path / "o" / DATA, mmap_mode="r")
    for k in complete:  # what the manifest calls complete is on disk
        np.testing.assert_allclose(data[6 * k:6 * k + 6], ref[6 * k:6 * k + 6], rtol=1e-5,
                                   atol=1e-6)

    counts.unlink(missing_ok=True)
    counts.with_name(counts.name + ".die").touch()
    folder = extract_distributed(enc, tmp_path / "o", texts, batch_size=5, shard_size=6, **ACTOR)
    assert not counts.with_name(counts.name + ".die").exists()  # an actor did exit
    assert sum(counted(counts)) == 6 * (5 - len(complete))  # only unfinished shards, once each
    assert max(counted(counts)) <= 5
    X, layout = load_activations(folder)
    np.testing.assert_allclose(X, ref, rtol=1e-5, atol=1e-6)
    assert layout == enc.layout_


# ------------------------------------------------------------ command line, real driver SIGKILL
DRIVER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])  # tests/, for _ray_helpers
import ray, _ray_helpers
from embetter_plug import streaming
from embetter_plug._cli import extract as cli_extract

address, counts, delay = sys.argv[2], sys.argv[3], float(sys.argv[4])
ray.init(address=address, log_to_driver=False,
         runtime_env={"env_vars": {_ray_helpers.COUNTS: counts}})
_ray_helpers.register()
mark = streaming.ShardWriter.mark_complete
def slow(self, shards):  # leave time to kill between completed shards
    mark(self, shards)
    time.sleep(delay)
streaming.ShardWriter.mark_complete = slow
make = cli_extract.encoder_from_args
cli_extract.encoder_from_args = lambda args: _ray_helpers.CountingEncoder(**make(args).get_params())
from embetter_plug.cli import main
sys.exit(main(sys.argv[5:]))
"""


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, distinct):
    import pandas as pd

    from embetter_plug.testing import save_tiny_model

    root = tmp_path_factory.mktemp("raycli")
    model = save_tiny_model("gpt2", root / "model")
    csv = root / "data.csv"
    pd.DataFrame({"text": distinct[:30] * 2, "label": 0}).to_csv(csv, index=False)
    (root / "driver.py").write_text(DRIVER)
    return root, model, csv


def _complete(folder) -> set[int]:
    try:
        man = json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return set()
    return set(range(man["n_done"])) | set(man.get("done_after", []))


def test_driver_killed_mid_run_then_rerun_resumes_without_recomputing(cli_setup, ray_cluster,
                                                                      distinct):
    import os
    import signal
    import subprocess
    import sys
    import time

    from embetter_plug import TransformerActivationEncoder

    root, model, csv = cli_setup
    out = root / "acts"
    tests = os.path.dirname(__file__)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def cmd(counts, delay, *ray_options):
        return [sys.executable, str(root / "driver.py"), tests, ray_cluster.address, str(counts),
                str(delay), "extract", "--model", str(model), "--data", str(csv), "--out",
                str(out), "--shard-size", "10", "--parts", "resid_post,mlp_out",
                "--batch-size", "4", "--ray", ray_cluster.address, "--ray-num-cpus", "0.5",
                "--ray-batch-size", "5", *ray_options]

    # the actors write their rows into the folder themselves (one machine: shared storage)
    proc = subprocess.Popen(cmd(root / "first.txt", 1.0, "--ray-shared-storage"), env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and len(_complete(out)) < 2:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    complete = _complete(out)
    assert 2 <= len(complete) < 6
    with pytest.raises(ValueError, match="unfinished"):
        load_activations(out)

    # another pool size, with the rows sent to the driver, resumes the same extraction
    rerun = subprocess.run(cmd(root / "second.txt", 0, "--ray-actors", "2"), env=env,
                           capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed" in rerun.stdout
    # nothing finished is computed again (each text appears once per block of 5 rows here)
    assert sum(counted(root / "second.txt")) == 60 - 10 * len(complete)
    X, layout = load_activations(out)
    ref = TransformerActivationEncoder(str(model), parts=["resid_post", "mlp_out"],
                                       batch_size=4).fit()
    np.testing.assert_allclose(X, ref.transform(distinct[:30] * 2), rtol=1e-5, atol=1e-6)
    assert layout == ref.layout_


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_without_a_cluster_is_refused_before_the_model_loads(cli_setup, tmp_path):
    import subprocess
    import sys

    root, _, csv = cli_setup
    address = f"127.0.0.1:{_free_port()}"
    run = subprocess.run([sys.executable, "-m", "embetter_plug.cli", "extract", "--data",
                          str(csv), "--model", str(tmp_path / "no-model"), "--out",
                          str(tmp_path / "o"), "--ray", address], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    assert f"no Ray cluster answers at {address!r}" in run.stderr
    assert "ray start --head" in run.stderr
    assert not (tmp_path / "o").exists()


def test_gpus_on_a_cluster_without_gpus_are_refused_before_the_model_loads(cli_setup, ray_cluster,
                                                                          tmp_path, capsys):
    from embetter_plug.cli import main
    from embetter_plug.distributed import connect_ray

    root, _, csv = cli_setup
    rc = main(["extract", "--data", str(csv), "--model", str(tmp_path / "no-model"), "--out",
               str(tmp_path / "o"), "--ray", "--ray-num-gpus", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "num_gpus=1.0 per actor, but the Ray cluster has no GPUs" in err
    assert "--ray-num-gpus 0" in err and not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="has no GPUs"):
        connect_ray(num_gpus=0.5)


def test_a_folder_with_another_extraction_is_refused_before_the_model_loads(cli_setup, enc,
                                                                           ray_cluster, distinct,
                                                                           tmp_path, capsys):
    from embetter_plug.cli import main

    root, _, csv = cli_setup
    enc.extract_to(tmp_path / "o", distinct[:5])
    rc = main(["extract", "--data", str(csv), "--model", str(tmp_path / "no-model"), "--out",
               str(tmp_path / "o"), "--ray"])
    assert rc == 2
    assert "already holds a different extraction" in capsys.readouterr().err


def test_without_ray_the_error_gives_the_install_line(monkeypatch, cli_setup, tmp_path, capsys):
    import sys

    from embetter_plug.cli import main
    from embetter_plug.distributed import connect_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r'pip install "embetter_plug\[ray\]"'):
        connect_ray()
    root, _, csv = cli_setup
    assert main(["extract", "--data", str(csv), "--out", str(tmp_path / "o"), "--ray"]) == 2
    assert 'pip install "embetter_plug[ray]"' in capsys.readouterr().err


def test_the_core_package_does_not_import_ray():
    import subprocess
    import sys

    code = ("import sys, embetter_plug.encoder, embetter_plug.streaming, embetter_plug.cli, "
            "embetter_plug.distributed, embetter_plug._cli.extract; "
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------ searches through joblib's backend
def test_probe_layers_and_grid_search_on_the_cluster_equal_the_local_results(ray_cluster):
    import joblib
    from ray.util.joblib import register_ray
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    from embetter_plug import probe_layers

    register_ray()
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    X = rng.normal(size=(60, 3, 2, 8))
    X[:, 2, 1, 0] += 3 * y  # only layer 2, part 1 carries the label
    grid = {"C": [0.01, 0.1, 1.0]}
    local_probe = probe_layers(X, y, cv=3, scoring="accuracy")
    local_search = GridSearchCV(LogisticRegression(), grid, cv=3).fit(X[:, 2, 1], y)
    seen = []
    with joblib.parallel_backend("ray"):
        seen.append(type(joblib.parallel.get_active_backend()[0]).__name__)
        probe = probe_layers(X, y, cv=3, scoring="accuracy", n_jobs=2)
        search = GridSearchCV(LogisticRegression(), grid, cv=3, n_jobs=2).fit(X[:, 2, 1], y)
    assert seen == ["RayBackend"]
    assert probe.best_ == local_probe.best_ == (2, "part1")
    assert probe.frame_.equals(local_probe.frame_)
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"],
                                  local_search.cv_results_["mean_test_score"])
    assert search.best_params_ == local_search.best_params_


def test_texts_come_in_input_order_from_every_kind_of_input(ray_cluster, distinct, tmp_path):
    import pandas as pd
    import ray.data

    from embetter_plug.distributed import _read_texts

    texts = distinct[:25]
    frame = pd.DataFrame({"label": range(25), "body": texts})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    dataset = ray.data.from_pandas([frame.iloc[i:i + 5] for i in range(0, 25, 5)])
    for data in (texts, frame["body"], frame, tmp_path / "t.csv", str(tmp_path / "t.parquet"),
                 dataset):
        assert _read_texts(data, "body") == texts, type(data)
    with pytest.raises(ValueError, match=r"text_column='text' is not a column .*'label', 'body'"):
        _read_texts(dataset)
    with pytest.raises(ValueError, match="text_column='text' is not a column"):
        _read_texts(frame)
    with pytest.raises(FileNotFoundError, match="no file at"):
        _read_texts(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="only .csv and .parquet"):
        _read_texts(tmp_path)


def test_ctrl_c_after_ray_says_what_was_kept(monkeypatch, cli_setup, tmp_path, capsys):
    """The same "kept N of M" as without --ray, counting shards finished out of order (shard 2
    holds rows 8 and 9)."""
    import embetter_plug.distributed as dist
    from embetter_plug.cli import main
    from embetter_plug.streaming import ShardWriter, extraction_plan

    def interrupted(enc, folder, texts, shard_size=None, **kwargs):  # shards 0 and 2, then Ctrl-C
        writer = ShardWriter.open(folder, extraction_plan(enc, folder, texts, shard_size=4))
        for k in (0, 2):
            writer.write_shard(k, enc.encode(texts[4 * k:4 * k + 4]))
        raise KeyboardInterrupt

    monkeypatch.setattr(dist, "connect_ray", lambda *a, **k: False)
    monkeypatch.setattr(dist, "extract_distributed", interrupted)
    root, model, csv = cli_setup
    out = tmp_path / "o"
    assert main(["extract", "--data", str(csv), "--model", str(model), "--layers", "0",
                 "--limit", "10", "--out", str(out), "--ray", "--quiet"]) == 130
    err = capsys.readouterr().err
    assert (f"interrupted: kept: 2 of 3 shards (6 of 10 texts) in {str(out)!r}; run the same "
            "command again to resume (it skips the complete shards)") in err, err
    assert "\x1b" not in err


def test_ray_notices_go_to_debug_logging(monkeypatch, caplog):
    """Ray's notices (token authentication, progress bars off, execution plans) are not for the
    user unless asked (-vv): its log level is ERROR, DEBUG with this package's debug logging."""
    import logging

    import ray

    import embetter_plug.distributed as dist

    seen = []

    class Stop(Exception):
        pass

    def init(**kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(Stop):
        dist.connect_ray()
    with caplog.at_level(logging.DEBUG, logger="embetter_plug"), pytest.raises(Stop):
        dist.connect_ray("auto")
    assert [s["logging_level"] for s in seen] == [logging.ERROR, logging.DEBUG]
    assert all(s["log_to_driver"] is False for s in seen)
