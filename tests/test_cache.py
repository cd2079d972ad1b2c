"""ActivationCache: read-through equals direct extraction, forward passes are counted, keys
separate what differs and share what does not, damaged entries are recomputed."""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from conftest import assert_same_activations
from embetter_plug import ActivationCache, LayerPooler, TransformerActivationEncoder
from embetter_plug.store.cache import _decode, _encode, model_fingerprint
from embetter_plug.testing import make_tiny_model, save_tiny_model


@contextlib.contextmanager
def count_forwards(model):
    """Count the texts (rows) fed to ``model``'s forward; copies made by ``clone`` count too.
    The class's forward is wrapped (a hook on the model would make the cache refuse it)."""
    counter = {"rows": 0, "calls": 0}
    cls = type(model)
    original = cls.forward

    def forward(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        counter["calls"] += 1
        if counter["calls"] == counter.get("interrupt_at"):
            raise KeyboardInterrupt
        counter["rows"] += int(ids.shape[0])
        return original(self, *args, **kwargs)

    cls.forward = forward
    try:
        yield counter
    finally:
        cls.forward = original


@pytest.fixture
def model_tok():
    model, tok = make_tiny_model("gpt2")
    return copy.deepcopy(model), tok  # a private copy: hooks never leak into other tests


def _enc(model, tok, cache, **kw):
    kw.setdefault("parts", ["resid_post", "mlp_out"])
    kw.setdefault("verify", False)  # these count transform's forwards, not the check at fit
    return TransformerActivationEncoder(model, tok, cache=cache, **kw).fit()


def test_read_through_equals_direct_and_second_call_runs_nothing(model_tok, texts, tmp_path):
    model, tok = model_tok
    direct = TransformerActivationEncoder(model, tok, parts=["resid_post", "mlp_out"]).fit()
    ref = direct.transform(texts)
    enc = _enc(model, tok, tmp_path)
    with count_forwards(model) as c:
        first = enc.transform(texts)
    assert c["rows"] == len(set(texts))
    assert_same_activations(first, ref)
    with count_forwards(model) as c:
        again = _enc(model, tok, ActivationCache(tmp_path)).transform(texts[::-1])
    assert c["rows"] == 0
    assert_same_activations(again, ref[::-1])
    assert len(ActivationCache(tmp_path)) == len(set(texts))


def test_duplicates_within_a_call_are_computed_once(model_tok, tmp_path):
    model, tok = model_tok
    enc = _enc(model, tok, tmp_path)
    with count_forwards(model) as c:
        X = enc.transform(["same text", "other text", "same text", "same text"])
    assert c["rows"] == 2
    assert_same_activations(X[0], X[2])


def test_other_layers_and_parts_reuse_stored_vectors(model_tok, texts, tmp_path):
    model, tok = model_tok
    full = _enc(model, tok, tmp_path).transform(texts)  # layers 0..2 x resid_post, mlp_out
    sub = _enc(model, tok, tmp_path, layers=[-1, 0], parts="mlp_out")
    with count_forwards(model) as c:
        X = sub.transform(texts)
    assert c["rows"] == 0
    assert_same_activations(X[:, :, 0], full[:, [2, 0], 1])
    # a new pooling is computed once, then stored beside the old vectors
    mean = _enc(model, tok, tmp_path, token_pooling="mean")
    with count_forwards(model) as c:
        Xm = mean.transform(texts)
        both = _enc(model, tok, tmp_path, token_pooling=["lasttoken", "mean"]).transform(texts)
    assert c["rows"] == len(set(texts))
    assert_same_activations(both[:, :, [0, 2]], full)
    assert_same_activations(both[:, :, [1, 3]], Xm)


@pytest.mark.parametrize("change", [
    {"prompt_template": "{text}</s>"}, {"max_length": 8}, {"dtype": "bfloat16"}, {"seed": 1},
])
def test_settings_and_models_that_change_vectors_get_their_own_entries(change, texts, tmp_path):
    model, tok = make_tiny_model("gpt2")
    _enc(model, tok, tmp_path).transform(texts[:4])
    change = dict(change)
    seed = change.pop("seed", None)
    if seed is not None:
        model, tok = make_tiny_model("gpt2", seed=seed)
    model = copy.deepcopy(model)
    enc = _enc(model, tok, tmp_path, **change)
    with count_forwards(model) as c, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # truncation warning for max_length=8
        X = enc.transform(texts[:4])
    assert c["rows"] == 4
    ref = TransformerActivationEncoder(model, tok, parts=["resid_post", "mlp_out"], **change).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert_same_activations(X, ref.transform(texts[:4]))


def test_model_fingerprint_follows_weights_not_objects(tmp_path):
    model, _ = make_tiny_model("gpt2")
    twin = copy.deepcopy(model)
    assert model_fingerprint(model, None, None) == model_fingerprint(twin, None, None)
    with __import__("torch").no_grad():
        next(twin.parameters()).mul_(1.5)
    assert model_fingerprint(model, None, None) != model_fingerprint(twin, None, None)
    a, b = save_tiny_model("gpt2", tmp_path / "a"), save_tiny_model("gpt2", tmp_path / "b")
    c = save_tiny_model("gpt2", tmp_path / "c", seed=3)
    assert model_fingerprint(None, str(a), None) == model_fingerprint(None, str(b), None)
    assert model_fingerprint(None, str(a), None) != model_fingerprint(None, str(c), None)
    assert model_fingerprint(None, "gpt2", None) != model_fingerprint(None, "gpt2", "v2")


@pytest.mark.parametrize("whole", [True, False])  # small files hashed whole, large ones sampled
def test_weights_saved_again_into_the_same_folder_get_a_new_identity(whole, tmp_path, texts,
                                                                      monkeypatch):
    import torch

    from embetter_plug.extraction import identity as cache_module

    if not whole:
        monkeypatch.setattr(cache_module, "_WHOLE", 1024)  # the tiny weight file counts as large
    model, tok = make_tiny_model("gpt2")
    model = copy.deepcopy(model)
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    enc = lambda: TransformerActivationEncoder(str(folder), cache=tmp_path / "c",  # noqa: E731
                                               layers=[2]).fit()
    before = enc().transform(texts[:4])
    assert model_fingerprint(None, str(folder), None) == model_fingerprint(None, str(folder), None)
    with torch.no_grad():
        for p in model.h[1].parameters():  # a middle block only, as a partial fine-tune would
            p.add_(0.5)
    model.save_pretrained(folder)
    fresh = TransformerActivationEncoder(str(folder), layers=[2]).fit().transform(texts[:4])
    assert not np.allclose(fresh, before)
    assert_same_activations(enc().transform(texts[:4]), fresh)  # not the stale entries


def test_folder_models_share_entries_across_copies(texts, tmp_path):
    a = save_tiny_model("gpt2", tmp_path / "a")
    b = save_tiny_model("gpt2", tmp_path / "b")
    cache = tmp_path / "cache"
    Xa = TransformerActivationEncoder(str(a), cache=cache).fit().transform(texts[:5])
    enc_b = TransformerActivationEncoder(str(b), cache=cache).fit()
    with count_forwards(enc_b.model_) as c:
        Xb = enc_b.transform(texts[:5])
    assert c["rows"] == 0
    assert_same_activations(Xa, Xb)


def test_grid_search_runs_each_distinct_text_once_then_never(model_tok, tmp_path):
    from embetter_plug import load_builtin_dataset

    df = load_builtin_dataset("train").iloc[:40]
    X, y = df["text"].tolist(), df["label"].to_numpy()
    model, tok = model_tok
    pipe = make_pipeline(TransformerActivationEncoder(model, tok, cache=tmp_path / "c",
                                                      verify=False),  # transform's forwards
                         LayerPooler(), LogisticRegression(max_iter=200))
    grid = {"layerpooler__layers": [0, 1, 2], "logisticregression__C": [0.1, 1.0]}
    with count_forwards(model) as c:
        first = GridSearchCV(pipe, grid, cv=5).fit(X, y)
    assert c["rows"] == len(set(X))
    with count_forwards(model) as c:
        second = GridSearchCV(pipe, grid, cv=5).fit(X, y)
    assert c["rows"] == 0
    np.testing.assert_allclose(first.cv_results_["mean_test_score"],
                               second.cv_results_["mean_test_score"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_entries_are_reported_and_recomputed(damage, model_tok, texts, tmp_path):
    model, tok = model_tok
    enc = _enc(model, tok, tmp_path)
    ref = enc.transform(texts[:3])
    files = sorted((tmp_path / "entries").glob("*/*.act"))
    target = files[0]
    raw = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
    else:
        target.write_bytes(b"not an entry")
    assert ActivationCache(tmp_path).info()["n_damaged"] == 1
    with count_forwards(model) as c, pytest.warns(RuntimeWarning, match="damaged"):
        X = enc.transform(texts[:3])
    assert c["rows"] == 1
    assert_same_activations(X, ref)
    assert ActivationCache(tmp_path).info()["n_damaged"] == 0


def test_leftover_temp_files_are_ignored_listed_and_cleared(tmp_path):
    cache = ActivationCache(tmp_path)
    cache.put("ab" + "0" * 62, {"0|resid_post|mean": np.arange(4.0)}, label="m")
    (tmp_path / "entries" / "ab" / ".halfwritten.act.tmp").write_bytes(b"partial")
    assert cache.get("ab" + "1" * 62) is None
    info = cache.info()
    assert (info["n_entries"], info["n_temp"], info["labels"]) == (1, 1, {"m": 1})
    assert cache.clear() == 1
    assert cache.info()["n_entries"] == 0 and cache.info()["n_temp"] == 0


def test_entry_format_round_trips_and_rejects_any_damage():
    data = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    raw = _encode({"names": ["a", "b", "c"]}, data)
    header, back = _decode(raw)
    np.testing.assert_array_equal(back, data)
    for cut in (0, 10, len(raw) - 1):
        with pytest.raises(ValueError):
            _decode(raw[:cut])
    for pos in range(0, len(raw), 7):
        bad = bytearray(raw)
        bad[pos] ^= 1
        with pytest.raises(ValueError):
            _decode(bytes(bad))


def test_concurrent_readers_see_whole_entries_while_a_writer_replaces_them(tmp_path):
    cache = ActivationCache(tmp_path)
    key = "cd" + "2" * 62
    versions = [{"v": np.full(256, float(i), np.float32)} for i in range(2)]
    cache.put(key, versions[0])
    errors, stop = [], threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            cache.put(key, versions[i % 2])
            i += 1

    def reader():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a damaged read would warn
            for _ in range(300):
                try:
                    got = cache.get(key)["v"]
                    assert got[0] in (0.0, 1.0) and np.all(got == got[0])
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)
    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert errors == []


def test_bad_cache_parameter_is_rejected_in_fit_before_loading(model_tok, texts, monkeypatch):
    model, tok = model_tok
    import embetter_plug.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "resolve_model_source",
                        lambda m: pytest.fail("the model was looked up before the check"))
    with pytest.raises(TypeError, match="cache must be None, a folder or an ActivationCache, got int"):
        TransformerActivationEncoder(model, tok, cache=42).fit()
    monkeypatch.undo()
    # set after fitting: still caught before any forward pass
    enc = TransformerActivationEncoder(model, tok).fit().set_params(cache=42)
    with count_forwards(model) as c, pytest.raises(TypeError, match="cache must be"):
        enc.transform(texts[:2])
    assert c["calls"] == 0


def test_cli_cache_info_and_clear(model_tok, texts, tmp_path, capsys):
    from embetter_plug.cli import main

    model, tok = model_tok
    _enc(model, tok, tmp_path).transform(texts[:6])
    assert main(["cache", "info", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "entries: 6 (36 vectors)" in out and "GPT2Model" in out
    assert main(["cache", "clear", "--dir", str(tmp_path)]) == 0
    assert "removed 6 entries" in capsys.readouterr().out
    assert len(ActivationCache(tmp_path)) == 0


def test_an_interrupted_cached_transform_keeps_the_batches_it_finished(model_tok, texts, tmp_path):
    model, tok = model_tok
    enc = _enc(model, tok, tmp_path, batch_size=4)
    n = len(set(texts))
    with pytest.raises(KeyboardInterrupt), count_forwards(model) as c:
        c["interrupt_at"] = 3  # the third forward is interrupted
        enc.transform(texts)
    assert len(ActivationCache(tmp_path)) == 8  # the two finished batches
    with count_forwards(model) as c:
        resumed = enc.transform(texts)
    assert c["rows"] == n - 8
    direct = TransformerActivationEncoder(model, tok, parts=["resid_post", "mlp_out"]).fit()
    assert_same_activations(resumed, direct.transform(texts))
