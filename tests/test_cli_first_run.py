"""A first run of the command line: progress, a run folder left behind, Ctrl-C, file permissions.

The command line tests run the real ``embetter-plug`` command in a subprocess.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from embetter_plug import load_activations


def _cli(*args, cwd, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "embetter_plug.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from embetter_plug import load_builtin_dataset
    from embetter_plug.testing import save_tiny_model

    root = tmp_path_factory.mktemp("first_run")
    model = save_tiny_model("gpt2", root / "gpt2")
    df = load_builtin_dataset("train")
    df = pd.concat([df[df.label == 1].iloc[:20], df[df.label == 0].iloc[:20]])
    csv = root / "small.csv"
    df.to_csv(csv, index=False)
    return {"root": root, "model": str(model), "csv": str(csv), "df": df}


def test_probe_leaves_a_run_folder_and_shows_progress(setup, tmp_path):
    from test_probe_results import _render

    run = _cli("probe", "--data", setup["csv"], "--model", setup["model"], "--layers", "0,1",
               "--cv", "2", "--progress", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    # one bar for the extraction and one for the probes, each with its estimate
    starts = re.findall(r"(encoding|probing): +0%\|", run.stderr)
    assert starts == ["encoding", "probing"], run.stderr[-2000:]
    assert re.search(r"encoding: 100%\|[^\n\r]*\| 2/2 \[", run.stderr)  # 40 texts, batches of 32
    # the results went to a new folder under ./embetter-plug-runs, named at the end
    m = re.search(r"^wrote (\S*embetter-plug-runs/probe-\d{8}-\d{6})/: results.csv", run.stdout,
                  re.M)
    assert m, run.stdout
    folder = tmp_path / m.group(1)
    # a tiny random model on 40 rows: no signal, so the pipeline's name carries the warning
    from embetter_plug import ProbeResults

    best = ("best_pipeline" if ProbeResults.read(folder / "results.csv").verdict()["beats_chance"]
            else "best_pipeline_no_signal")
    for name in ("results.csv", "probe.png", "report.html", f"{best}.joblib",
                 f"{best}/pipeline.skops"):
        assert (folder / name).is_file(), name
    report = (folder / "report.html").resolve()
    assert f"open the report in a browser: {report.as_uri()}" in run.stdout
    # the saved pipeline predicts without this run's progress bars
    # (and the pickle-free copy predicts the same)
    code = ("import joblib, sys; from embetter_plug import load_model; "
            "pipe = joblib.load(sys.argv[1]); safe = load_model(sys.argv[2]); "
            "texts = ['a text', 'another one']; p = pipe.predict_proba(texts); "
            "print(pipe.named_steps['encoder'].verbose, len(p), "
            "abs(p - safe.predict_proba(texts)).max() < 1e-6)")
    pred = subprocess.run([sys.executable, "-c", code, str(folder / f"{best}.joblib"),
                           str(folder / best)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert pred.returncode == 0, pred.stderr
    assert pred.stdout.split() == ["False", "2", "True"]
    assert "%|" not in pred.stderr
    # the report opens in a browser with its chart drawn
    dom = _render(report, "metric=roc_auc")
    assert 'data-rendered="' in dom and '<g class="series" data-part="resid_post"' in dom


def test_a_new_run_never_reuses_a_folder(tmp_path, monkeypatch):
    from embetter_plug.cli._runs import new_run_folder

    monkeypatch.chdir(tmp_path)
    first = new_run_folder("probe")
    assert not first.exists() and first.parent.name == "embetter-plug-runs"
    first.mkdir(parents=True)
    second = new_run_folder("probe")  # within the same second: a suffix
    assert second != first and not second.exists() and second.parent == first.parent


@pytest.mark.parametrize("given, tty, shown", [
    ({}, True, True), ({}, False, False), ({"quiet": True}, True, False),
    ({"progress": True}, False, True),
])
def test_progress_by_default_on_a_terminal(monkeypatch, given, tty, shown):
    from embetter_plug.cli._data import show_progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    args = argparse.Namespace(**{"progress": None, "quiet": False, **given})
    assert show_progress(args) is shown


def test_streamed_extraction_shows_one_bar(tmp_path, capsys, tiny_gpt2, texts):
    from embetter_plug import TransformerActivationEncoder

    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(model, tok, layers=[0], batch_size=2, verbose=True).fit()
    enc.extract_to(tmp_path / "acts", texts, shard_size=5)  # 24 texts: 5 shards
    err = capsys.readouterr().err
    assert len(re.findall(r"encoding: +0%\|", err)) == 1
    assert re.search(rf"encoding: 100%\|[^\r\n]*\| {len(texts)}/{len(texts)} ", err)
    assert enc.verbose is True


#: runs `embetter-plug` with a pause after the second complete shard: it writes the file named
#: by $PAUSED_AT then waits there, so a test sends SIGINT at a point it knows, whatever the load
PAUSE_AFTER_SHARD_2 = """
import os, signal, sys, time
# Ctrl-C as in a terminal, also when the test run itself was started in the background (a shell
# starts background jobs with SIGINT ignored, and a child inherits that)
signal.signal(signal.SIGINT, signal.default_int_handler)
from embetter_plug import streaming
mark = streaming.ShardWriter.mark_complete
def paused(self, shards):
    mark(self, shards)
    if self.n_done == 2:
        open(os.environ["PAUSED_AT"], "w").close()
        while True:
            time.sleep(0.05)
streaming.ShardWriter.mark_complete = paused
from embetter_plug.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _paused_cli(args, cwd):
    """The running command, once it is paused after its second complete shard."""
    paused = cwd / "paused"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PAUSED_AT": str(paused)}
    proc = subprocess.Popen([sys.executable, "-c", PAUSE_AFTER_SHARD_2, *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not paused.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert paused.exists(), proc.communicate(timeout=60)
    return proc


def test_ctrl_c_during_extract_says_what_was_kept_and_resumes(setup, tmp_path):
    """A real SIGINT to a running `embetter-plug extract ... --out acts.npz`, then a rerun."""
    out = tmp_path / "acts.npz"
    args = ["extract", "--model", setup["model"], "--layers", "0", "--batch-size", "4",
            "--shard-size", "4", "--limit", "200", "--out", str(out), "--quiet"]
    proc = _paused_cli(args, tmp_path)
    manifest = tmp_path / "acts.npz.partial" / "manifest.json"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    m = re.search(r"interrupted: kept: (\d+) of (\d+) shards \((\d+) of 200 texts\) in "
                  r"'[^']*acts\.npz\.partial'; run the same command again to resume \(it skips "
                  r"the complete shards\) \(the \.npz file is written when all are done\)", stderr)
    assert m, stderr[-2000:]
    kept, n_shards, rows = map(int, m.groups())
    assert (kept, n_shards, rows) == (2, 50, 8)
    assert not out.exists()
    # files are readable like any file the user writes (not the temporary file's 0o600)
    assert manifest.stat().st_mode & 0o777 == 0o666 & ~_umask()
    again = _cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"resumed after shard {kept} of 50")
    assert not (tmp_path / "acts.npz.partial").exists()
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    X, layout = load_activations(out)
    assert X.shape[0] == 200 and np.isfinite(X).all()
    # the resumed file equals an extraction without interruption
    from embetter_plug import TransformerActivationEncoder, load_builtin_dataset

    texts = load_builtin_dataset()["text"].tolist()
    enc = TransformerActivationEncoder(setup["model"], layers=[0], batch_size=4).fit()
    some = [0, 5, kept * 4 - 1, kept * 4, 199]
    np.testing.assert_allclose(X[some], enc.transform([texts[i] for i in some]),
                               rtol=1e-5, atol=1e-5)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_written_files_respect_the_umask(tmp_path, mask):
    from embetter_plug import save_activations
    from embetter_plug.layout import ActivationLayout

    old = os.umask(mask)
    try:
        lay = ActivationLayout(layers=(0,), parts=("resid_post",), hidden_size=2)
        path = save_activations(tmp_path / "a.npz", np.ones((2, 1, 1, 2), np.float32), lay)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_interrupted_probe_says_what_was_kept(setup, tmp_path, monkeypatch, capsys):
    import embetter_plug.cli.probe as cli_probe
    from embetter_plug.cli import main

    def interrupted(*args):  # Ctrl-C once the models are probed, before the table
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_probe, "_print_table", interrupted)
    out = tmp_path / "run"
    argv = ["probe", "--data", setup["csv"], "--model", setup["model"], "--layers", "0",
            "--parts", "resid_post", "--cv", "2"]
    assert main([*argv, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert (f"interrupted: kept: {out / 'results.csv'} with the probes of ['gpt2']; run the same "
            "command again with --overwrite (it starts over: pass --cache DIR to keep activations "
            "across runs)") in err
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--cache", str(tmp_path / "cache")]) == 130
    err = capsys.readouterr().err
    assert re.search(r"interrupted: kept: embetter-plug-runs/probe-[\d-]+/results.csv with the "
                     r"probes of \['gpt2'\]; run the same command again; the activations computed "
                     r"so far are kept in the cache '\S+cache', so it computes only the rest", err)


def test_a_warning_shows_once_in_plain_words(setup, tmp_path):
    """The model's own length limit is hit in the probe's encoding and again in its pattern view
    and refit: one `warning: ...` line, not Python's `file:8: UserWarning` form per place."""
    df = setup["df"].copy()
    df.loc[df.index[0], "text"] = " ".join(["word"] * 600)  # past the tiny model's 512 positions
    csv = tmp_path / "long.csv"
    df.to_csv(csv, index=False)
    run = _cli("probe", "--data", str(csv), "--model", setup["model"], "--layers", "0",
               "--parts", "resid_post", "--cv", "2", "--quiet", "--out", str(tmp_path / "o"),
               cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = [l for l in run.stderr.splitlines() if "were truncated" in l]
    assert len(lines) == 1 and lines[0].startswith("warning: texts longer than the model's limit")
    assert "UserWarning" not in run.stderr and "sys.exit" not in run.stderr
