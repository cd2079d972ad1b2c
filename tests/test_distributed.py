"""Extraction on a local Ray cluster: equals in-process extraction, dedups per block, survives a
failed task, a killed actor and a killed driver, and refuses bad input before a model loads."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest

from embetter_plug import load_activations
from embetter_plug.store.io import DATA, MANIFEST
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
    from embetter_plug.store.distributed import extract_distributed

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
    from embetter_plug.store.distributed import extract_distributed

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
from embetter_plug.cli import extract as cli_extract

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


def _kill_after_two_shards(proc, out) -> set[int]:
    """SIGKILL the run once two shards of ``out`` are complete; return the complete ones."""
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and len(_complete(out)) < 2:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return _complete(out)


def _complete(folder) -> set[int]:
    try:
        man = json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return set()
    return set(range(man["n_done"])) | set(man.get("done_after", []))


def test_driver_killed_mid_run_then_rerun_resumes_without_recomputing(cli_setup, ray_cluster,
                                                                      distinct):
    import os
    import subprocess
    import sys

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
    complete = _kill_after_two_shards(proc, out)
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
    from embetter_plug.store.distributed import connect_ray

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
    from embetter_plug.store.distributed import connect_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r'pip install "embetter_plug\[ray\]"'):
        connect_ray()
    root, _, csv = cli_setup
    assert main(["extract", "--data", str(csv), "--out", str(tmp_path / "o"), "--ray"]) == 2
    assert 'pip install "embetter_plug[ray]"' in capsys.readouterr().err


def test_the_core_package_does_not_import_ray():
    import subprocess
    import sys

    code = ("import sys, embetter_plug.encoder, embetter_plug.store.streaming, embetter_plug.cli, "
            "embetter_plug.store.distributed, embetter_plug.cli.extract; "
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

    from embetter_plug.store.distributed import _read_inputs

    texts = distinct[:25]
    frame = pd.DataFrame({"label": range(25), "body": texts})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    dataset = ray.data.from_pandas([frame.iloc[i:i + 5] for i in range(0, 25, 5)])
    for data in (texts, frame["body"], frame, tmp_path / "t.csv", str(tmp_path / "t.parquet"),
                 dataset):
        assert _read_inputs(data, "body") == texts, type(data)
    with pytest.raises(ValueError, match=r"text_column='text' is not a column .*'label', 'body'"):
        _read_inputs(dataset)
    with pytest.raises(ValueError, match="text_column='text' is not a column"):
        _read_inputs(frame)
    with pytest.raises(FileNotFoundError, match="no file at"):
        _read_inputs(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="only .csv and .parquet"):
        _read_inputs(tmp_path)


def test_image_samples_come_in_input_order_from_tables_and_datasets(ray_cluster, image_set,
                                                                   tmp_path):
    import pandas as pd
    import ray.data

    from embetter_plug import read_image_folder
    from embetter_plug.store.distributed import _read_inputs

    root, _ = image_set
    samples, labels = read_image_folder(root, prompt="a prompt")
    paths = [str(root / p) for p in labels["path"]]
    frame = pd.DataFrame({"caption": ["a prompt"] * len(paths), "file": paths})
    frame.loc[3, "caption"] = None  # an image alone
    want = [s.key for s in samples]
    want[3] = read_image_folder(root)[0][3].key
    dataset = ray.data.from_pandas([frame.iloc[i:i + 8] for i in range(0, len(frame), 8)])
    frame.to_parquet(tmp_path / "s.parquet")
    for data in (frame, dataset, tmp_path / "s.parquet"):
        got = _read_inputs(data, "caption", "file")
        assert [s.key for s in got] == want, type(data)
    only_images = _read_inputs(frame[["file"]], image_column="file")
    assert [s.key for s in only_images] == [s.key for s in read_image_folder(root)[0]]


# ------------------------------------------------------------ image+text samples
@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    """A class-folder image set (32 tiny images, two label levels) and a tiny VLM folder."""
    from embetter_plug.testing import save_image_folder, save_tiny_vlm

    root = tmp_path_factory.mktemp("rayimages")
    return save_image_folder(root / "imgs"), save_tiny_vlm("llava", root / "llava")


def test_image_samples_equal_in_process_extraction_and_images_are_read_by_the_actors(
        image_set, counts, tmp_path):
    """Paths, bytes, an array and a text alone travel to the actors; the driver sends paths and
    bytes, never decoded pictures, and the folder equals ``extract_to``'s."""
    from embetter_plug import read_image_folder
    from embetter_plug.store.distributed import _blocks, extract_distributed
    from embetter_plug.inputs.samples import check_inputs

    root, model = image_set
    samples, labels = read_image_folder(root, prompt="What is in the picture?")
    pics = [str(root / p) for p in ("red_dots/0.png", "blue_stripes/1.png")]
    from PIL import Image

    extra = [{"text": "bytes", "image": open(pics[0], "rb").read()},
             {"text": "an array", "image": np.asarray(Image.open(pics[1]))},
             {"text": "no picture"}]
    inputs = samples[:9] + extra + samples[9:12]
    enc = CountingEncoder(str(model), layers=[0, 1], token_pooling=["image:mean", "lasttoken"],
                          batch_size=3).fit()
    blocks = _blocks(check_inputs(inputs), np.arange(len(inputs)), 5)
    shipped = blocks[1].to_pydict()  # rows 5..9: paths, then bytes (the array as a PNG)
    assert shipped["image_path"][:4] == [str((root / p).resolve()) for p in labels["path"][5:9]]
    assert shipped["image_path"][4] is None and isinstance(shipped["image_bytes"][4], bytes)
    assert blocks[2].to_pydict()["image_bytes"][2] is None  # the text alone
    ref = enc.extract_to(tmp_path / "local", inputs, shard_size=4)
    counts.unlink(missing_ok=True)
    folder = extract_distributed(enc, tmp_path / "o", inputs, batch_size=5, shard_size=4,
                                 **ACTOR)
    X, layout = load_activations(folder)
    local, _ = load_activations(ref)
    assert X.shape == (15, 2, 2, 32) and layout == enc.layout_
    np.testing.assert_allclose(X, local, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert sum(counted(counts)) == 15  # each sample forwarded once, in the actors
    # in-memory images travel as a PNG of the RGB picture the encoder reads: the same rows
    np.testing.assert_allclose(X[10], enc.transform([inputs[10]])[0], rtol=1e-5, atol=1e-6)


def test_image_dir_on_the_cluster_resumes_after_a_killed_driver(image_set, cli_setup,
                                                                ray_cluster, tmp_path):
    """`extract --image-dir --ray`: the driver is killed after two shards, the rerun resumes
    and computes only the rest; the folder equals in-process extraction, the labels (two
    levels) lie beside it."""
    import os
    import subprocess
    import sys

    import pandas as pd

    from embetter_plug import TransformerActivationEncoder, read_image_folder

    root, model = image_set
    driver = cli_setup[0] / "driver.py"
    out = tmp_path / "acts"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    options = ["--model", str(model), "--image-dir", str(root), "--prompt", "What is it?",
               "--hierarchy", str(root / "hierarchy.csv"), "--out", str(out),
               "--shard-size", "8", "--layers", "0,1", "--token-pooling", "image:mean,mean",
               "--batch-size", "4", "--ray", ray_cluster.address, "--ray-num-cpus", "0.5",
               "--ray-batch-size", "4"]

    def cmd(counts, delay, *more):
        return [sys.executable, str(driver), os.path.dirname(__file__), ray_cluster.address,
                str(counts), str(delay), "extract", *options, *more]

    proc = subprocess.Popen(cmd(tmp_path / "first.txt", 1.0, "--ray-shared-storage"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    complete = _kill_after_two_shards(proc, out)
    assert 2 <= len(complete) < 4

    rerun = subprocess.run(cmd(tmp_path / "second.txt", 0, "--ray-actors", "2"), env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed" in rerun.stdout
    assert sum(counted(tmp_path / "second.txt")) == 32 - 8 * len(complete)
    samples, labels = read_image_folder(root, prompt="What is it?",
                                        hierarchy=root / "hierarchy.csv")
    ref = TransformerActivationEncoder(str(model), layers=[0, 1],
                                       token_pooling=["image:mean", "mean"], batch_size=4).fit()
    X, layout = load_activations(out)
    np.testing.assert_allclose(X, ref.transform(samples), rtol=1e-5, atol=1e-6)
    assert layout == ref.layout_
    written = pd.read_csv(tmp_path / "acts.labels.csv")
    pd.testing.assert_frame_equal(written, labels)
    assert set(written["level_1"]) == {"red", "blue"} and written["label"].nunique() == 4


def test_ctrl_c_after_ray_says_what_was_kept(monkeypatch, cli_setup, tmp_path, capsys):
    """The same "kept N of M" as without --ray, counting shards finished out of order (shard 2
    holds rows 8 and 9)."""
    import embetter_plug.store.distributed as dist
    from embetter_plug.cli import main
    from embetter_plug.store.streaming import ShardWriter, extraction_plan

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

    import embetter_plug.store.distributed as dist

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
