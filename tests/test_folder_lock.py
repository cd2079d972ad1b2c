"""One writer per extraction folder (a second run is refused while the first writes, a lock left
by a killed run is taken over), and damaged or hostile folder contents are clear errors that
name the file: malformed manifests and cache entries, a symlinked activations.npy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from embetter_plug import TransformerActivationEncoder, load_activations
from embetter_plug.store._folder_lock import FolderInUseError
from embetter_plug.testing import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"text number {i} about a film" for i in range(12)]

# a first run that stops after its first shard until told to go on (stdin), saying so (stdout)
FIRST_RUN = textwrap.dedent("""
    import sys
    from embetter_plug import TransformerActivationEncoder
    from embetter_plug.store.streaming import ShardWriter
    from embetter_plug.testing import make_tiny_model

    original, written = ShardWriter.write_shard, []

    def write_shard(self, k, acts):
        original(self, k, acts)
        written.append(k)
        if len(written) == 1:
            print("paused", flush=True)
            sys.stdin.readline()

    ShardWriter.write_shard = write_shard
    model, tok = make_tiny_model("gpt2")
    texts = [f"text number {i} about a film" for i in range(12)]
    enc = TransformerActivationEncoder(model, tok, layers=[0]).fit()
    enc.extract_to(sys.argv[1], texts, shard_size=4)
    print("done", flush=True)
""")

HOLD_LOCK = textwrap.dedent("""
    import sys
    from embetter_plug.store._folder_lock import folder_lock

    with folder_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
""")


def _start(code, folder):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


def _encoder():
    model, tok = make_tiny_model("gpt2")
    return TransformerActivationEncoder(model, tok, layers=[0]).fit()


def test_a_second_run_is_refused_while_the_first_writes_the_folder(tmp_path):
    folder = tmp_path / "acts"
    first = _start(FIRST_RUN, folder)
    try:
        assert first.stdout.readline().strip() == "paused"  # one shard written, lock held
        enc = _encoder()
        for overwrite in (True, False):
            with pytest.raises(FolderInUseError, match=rf"'{folder}' is being written by another "
                                                       rf"extraction \(process {first.pid} "):
                enc.extract_to(folder, TEXTS, shard_size=4, overwrite=overwrite)
        first.stdin.write("\n")
        first.stdin.flush()
        assert first.stdout.readline().strip() == "done"
    finally:
        first.kill()
        first.wait(60)
    X, _ = load_activations(folder)
    np.testing.assert_allclose(X, enc.transform(TEXTS), atol=1e-6)  # nothing was clobbered


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    folder = tmp_path / "acts"
    holder = _start(HOLD_LOCK, folder)
    assert holder.stdout.readline().strip() == "locked"
    enc = _encoder()
    with pytest.raises(FolderInUseError, match=f"process {holder.pid}"):
        enc.extract_to(folder, TEXTS, shard_size=4)
    holder.send_signal(signal.SIGKILL)
    holder.wait(60)
    enc.extract_to(folder, TEXTS, shard_size=4)  # the dead process's lock is stale
    X, _ = load_activations(folder)
    np.testing.assert_allclose(X, enc.transform(TEXTS), atol=1e-6)


@pytest.mark.parametrize("content", ["{not json", '{"format": "embetter_plug.activations"}',
                                     "[1, 2]"])
def test_a_malformed_manifest_is_a_clear_error_naming_the_file(tmp_path, content):
    enc = _encoder()
    folder = tmp_path / "acts"
    enc.extract_to(folder, TEXTS, shard_size=4)
    (folder / "manifest.json").write_text(content)
    match = rf"the manifest '{folder / 'manifest.json'}' is damaged"
    with pytest.raises(ValueError, match=match):
        load_activations(folder)
    with pytest.raises(ValueError, match=match):
        enc.extract_to(folder, TEXTS, shard_size=4)
    enc.extract_to(folder, TEXTS, shard_size=4, overwrite=True)  # the way out it names
    np.testing.assert_allclose(load_activations(folder)[0], enc.transform(TEXTS), atol=1e-6)


def test_a_symlinked_data_file_is_never_written_through_on_resume(tmp_path):
    enc = _encoder()
    folder = tmp_path / "acts"
    enc.extract_to(folder, TEXTS, shard_size=4)
    target = tmp_path / "elsewhere.npy"
    os.replace(folder / "activations.npy", target)
    os.symlink(target, folder / "activations.npy")
    man = json.loads((folder / "manifest.json").read_text())
    man["n_done"] = 1  # an unfinished run to resume
    (folder / "manifest.json").write_text(json.dumps(man))
    before = target.read_bytes()
    with pytest.raises(ValueError, match=r"activations\.npy' is a symbolic link"):
        enc.extract_to(folder, TEXTS, shard_size=4)
    assert target.read_bytes() == before


def test_a_cache_entry_with_a_malformed_header_is_reported_and_recomputed(tmp_path):
    from embetter_plug import ActivationCache
    from embetter_plug.store.cache import _encode

    cache = ActivationCache(tmp_path)
    path = cache._file("ab" * 32)
    path.parent.mkdir(parents=True)
    path.write_bytes(_encode({"label": "x"}, np.zeros((2, 4), np.float32)))  # no names
    with pytest.warns(RuntimeWarning, match=rf"entry {path} is damaged \(malformed header"):
        assert cache.get("ab" * 32) is None
    assert not path.exists()
