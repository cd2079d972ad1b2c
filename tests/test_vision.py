"""Images and text: activations of vision-language models and vision encoders, checked against a
manual forward of each sample alone (``output_hidden_states``) on tiny offline models."""

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder
from embetter_plug.arch import blocks as _arch
from embetter_plug.testing import VLM_KINDS, make_tiny_vision, make_tiny_vlm

Image = pytest.importorskip("PIL.Image")


TEXT_ONLY_REFUSED = {"paligemma"}  # its processor needs an image with every text
TOWER_PER_IMAGE = ["gemma3", "llava", "paligemma"]  # one tower row per image


def _img(seed, size=(24, 30)):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 255, (size[1], size[0], 3)).astype("uint8")


def _samples(kind):
    rows = [{"text": "a picture of cats", "image": _img(0)},
            {"text": "the end of it and more words here", "image": _img(1, (48, 20))},
            {"text": "dog", "image": _img(2, (32, 32))}]
    if kind not in TEXT_ONLY_REFUSED:
        rows.insert(1, {"text": "no image in this one"})
    return rows


def _prompt(processor, text, image):
    """What the model reads for a sample: the processor's chat template (a user turn with the
    image and the text) or the image placeholder before the text."""
    if getattr(processor, "chat_template", None):
        content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
        return processor.apply_chat_template([{"role": "user", "content": content}],
                                             tokenize=False)
    return (processor.image_token if image else "") + text


def _alone(model, processor, sample):
    """``(hidden_states, input_ids)`` of one sample run alone."""
    from embetter_plug.inputs.images import load_image

    image = sample.get("image")
    kwargs = dict(text=[_prompt(processor, sample["text"], image is not None)],
                  return_tensors="pt")
    if image is not None:
        kwargs["images"] = [load_image(image)]
    inputs = processor(**kwargs)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return out.hidden_states, inputs["input_ids"][0]


@pytest.mark.parametrize("kind", VLM_KINDS)  # all built offline
def test_language_stack_equals_manual_forward(kind):
    model, processor = make_tiny_vlm(kind)
    samples = _samples(kind)
    pool = ["mean", "image:mean", "text:mean", "lasttoken", "image:max"]
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0], token_pooling=pool,
                                       batch_size=3)
    acts = enc.fit_transform(samples)
    assert acts.shape == (len(samples), 1, len(pool), _arch.hidden_size(model))
    image_id = model.config.image_token_id
    for i, s in enumerate(samples):
        hs, ids = _alone(model, processor, s)
        h = hs[1][0].numpy()  # block 0's output
        img = (ids == image_id).numpy()
        np.testing.assert_allclose(acts[i, 0, 0], h.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(acts[i, 0, 2], h[~img].mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(acts[i, 0, 3], h[-1], rtol=1e-4, atol=1e-5)
        if img.any():
            np.testing.assert_allclose(acts[i, 0, 1], h[img].mean(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(acts[i, 0, 4], h[img].max(0), rtol=1e-4, atol=1e-5)
        else:  # no image token to pool: NaN, never a silent zero
            assert np.isnan(acts[i, 0, 1]).all() and np.isnan(acts[i, 0, 4]).all()


@pytest.mark.parametrize("kind", VLM_KINDS)  # all built offline
def test_batch_and_padding_invariance(kind):
    model, processor = make_tiny_vlm(kind)
    samples = _samples(kind)
    params = dict(layers=[0], token_pooling=["mean", "image:mean", "lasttoken"])
    one = TransformerActivationEncoder(model, processor=processor, batch_size=1,
                                       **params).fit_transform(samples)
    tok = processor.tokenizer
    side = tok.padding_side
    try:
        tok.padding_side = "left" if side == "right" else "right"
        many = TransformerActivationEncoder(model, processor=processor, batch_size=4,
                                            **params).fit_transform(samples[::-1])[::-1]
    finally:
        tok.padding_side = side
    np.testing.assert_allclose(many, one, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", TOWER_PER_IMAGE)
def test_vision_tower_parts(kind):
    from embetter_plug.arch import vision as _vision

    model, processor = make_tiny_vlm(kind)
    samples = [s for s in _samples(kind) if "image" in s]
    enc = TransformerActivationEncoder(model, processor=processor,
                                       parts=["vision.resid_post", "vision.mlp_out"],
                                       token_pooling=["cls", "image:mean"], batch_size=2)
    acts = enc.fit_transform(samples)
    tower = _vision.find_tower(model)
    assert type(tower.config) is type(model.config.vision_config)
    n = model.config.vision_config.num_hidden_layers
    assert enc.layout_.layers == tuple(range(n)) and enc.layout_.meta["stack"] == "vision"
    assert enc.layout_.parts[0] == "vision.resid_post@cls"
    from embetter_plug.inputs.images import load_image

    for i, s in enumerate(samples):
        pix = processor.image_processor(images=[load_image(s["image"])],
                                        return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            hs = tower(pix, output_hidden_states=True).hidden_states
        n_patches = model.config.vision_config.image_size ** 2 // (
            model.config.vision_config.patch_size ** 2)
        for layer in range(n - 1):  # the last hidden state may be normed
            h = hs[layer + 1][0].numpy()
            np.testing.assert_allclose(acts[i, layer, 0], h[0], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(acts[i, layer, 1], h[-n_patches:].mean(0), rtol=1e-4,
                                       atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip", "vit"])
def test_vision_encoder_on_digits(kind):
    from sklearn.datasets import load_digits

    from embetter_plug.inputs.images import load_image

    model, image_processor = make_tiny_vision(kind)
    digits = load_digits().images[:6] / 16.0  # (n, 8, 8) greys in [0, 1]
    enc = TransformerActivationEncoder(model, processor=image_processor,
                                       token_pooling=["auto", "cls"], batch_size=4)
    acts = enc.fit_transform(digits)
    assert enc.layout_.parts == ("resid_post@image:mean", "resid_post@cls")
    n_patches = model.config.image_size ** 2 // model.config.patch_size ** 2
    for i in (0, 5):
        pix = image_processor(images=[load_image(digits[i])], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            h = model(pixel_values=pix, output_hidden_states=True).hidden_states[1][0].numpy()
        np.testing.assert_allclose(acts[i, 0, 0], h[-n_patches:].mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(acts[i, 0, 1], h[0], rtol=1e-4, atol=1e-5)


def test_cache_keys_on_pixels(tmp_path):
    model, processor = make_tiny_vlm("llava")
    samples = _samples("llava")
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0],
                                       token_pooling="image:mean", cache=tmp_path / "c")
    first = enc.fit_transform(samples)
    again = enc.transform(samples)
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-6)
    from embetter_plug import ActivationCache

    n = len(ActivationCache(tmp_path / "c"))
    changed = dict(samples[0], image=samples[0]["image"].copy())
    changed["image"][8:22, 6:18] = 255 - changed["image"][8:22, 6:18]  # inside the crop
    out = enc.transform([changed])
    assert len(ActivationCache(tmp_path / "c")) == n + 1  # a miss: stored anew
    assert not np.allclose(out[0], first[0])


@pytest.fixture
def counted():
    model, processor = make_tiny_vlm("llava")
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    yield model, processor, calls
    handle.remove()


@pytest.mark.parametrize("bad, exc, match", [
    ([{"text": "a", "image": "no/such/file.png"}], FileNotFoundError,
     r"X\[0\]: image file 'no/such/file.png' does not exist"),
    ([{"text": "a"}, {"text": "b", "image": b"not an image"}], ValueError,
     r"X\[1\]: 12 bytes that are not an image"),
    ([{"text": "two <image> <image>", "image": np.zeros((8, 8, 3), "uint8")}], ValueError,
     r"sample 0: its text holds 2 image placeholder\(s\) '<image>' for 1 image"),
    ([{"text": "a <image> b"}], ValueError, r"holds 1 image placeholder\(s\) '<image>' for 0"),
    ([{"text": "a", "image": np.zeros((8, 8, 5), "uint8")}], ValueError,
     r"X\[0\]: the image is an array of shape \(8, 8, 5\)"),
    ([{"text": "a", "image": np.full((8, 8), 7.0)}], ValueError, r"values in \[7, 7\]"),
    ([{"text": ""}], ValueError, r"X\[0\]: the sample is empty"),
    ([{"text": "a", "image": None, "label": 1}], ValueError, r"unknown keys \['label'\]"),
])
def test_bad_samples_fail_before_the_forward(counted, bad, exc, match):
    model, processor, calls = counted
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0]).fit()
    with pytest.raises(exc, match=match):
        enc.transform(bad)
    assert calls == []


def test_image_to_text_model_and_wrong_stack_errors(tmp_path):
    from embetter_plug.testing import make_tiny_model

    model, tok = make_tiny_model("gpt2")
    enc = TransformerActivationEncoder(model, tok).fit()
    with pytest.raises(ValueError, match="reads text only.*pass a model that reads images"):
        enc.transform([{"text": "a", "image": np.zeros((8, 8, 3), "uint8")}])
    vlm, processor = make_tiny_vlm("llava")
    with pytest.raises(ValueError, match="mix the vision tower"):
        TransformerActivationEncoder(vlm, processor=processor,
                                     parts=["vision.resid_post", "resid_post"]).fit()
    enc = TransformerActivationEncoder(vlm, processor=processor, parts="vision.resid_post").fit()
    with pytest.raises(ValueError, match=r"samples \[1\] have none"):
        enc.transform([{"text": "a", "image": _img(0)}, {"text": "b"}])
    enc = TransformerActivationEncoder(vlm, processor=processor, token_pooling="image:mean").fit()
    with pytest.raises(ValueError, match="inputs are plain texts"):
        enc.transform(["a plain text"])


def test_dataframe_pairs_and_paths(tmp_path):
    import pandas as pd

    model, processor = make_tiny_vlm("llava")
    paths = []
    for i in range(2):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(_img(i)).save(p)
        paths.append(str(p))
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0],
                                       token_pooling="image:mean").fit()
    from_df = enc.transform(pd.DataFrame({"text": ["a", "b"], "image": paths}))
    from_pairs = enc.transform([("a", Image.open(paths[0])), ("b", Image.open(paths[1]))])
    from_arrays = enc.transform([{"text": "a", "image": _img(0)}, {"text": "b", "image": _img(1)}])
    np.testing.assert_allclose(from_df, from_pairs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_df, from_arrays, rtol=1e-5, atol=1e-6)


# where each kind's tower keeps its blocks, and whether it flattens the patches of a batch
TILED = {"llava_next": ("model.vision_tower.encoder.layers", False),
         "idefics3": ("model.vision_model.encoder.layers", False),
         "qwen2_vl": ("model.visual.blocks", True), "qwen2_5_vl": ("model.visual.blocks", True)}


@pytest.mark.parametrize("kind", sorted(TILED))
def test_tiled_and_flattened_towers(kind):
    """An image the tower sees as several tiles (LLaVA-NeXT, Idefics3) or as patches flattened
    with the rest of the batch (Qwen2-VL) is pooled over all its tokens: checked against the
    tower's blocks hooked during a forward of the sample alone."""
    model, processor = make_tiny_vlm(kind)
    path, flat = TILED[kind]
    samples = [{"text": "a picture of cats", "image": _img(0)},
               {"text": "the end", "image": _img(1, (48, 20))},
               {"text": "dog", "image": _img(2, (40, 40))}]
    pool = ["image:mean", "image:max"] + ([] if flat else ["cls"])
    enc = TransformerActivationEncoder(model, processor=processor, parts="vision.resid_post",
                                       token_pooling=pool, batch_size=2)
    acts = enc.fit_transform(samples)
    blocks = model.get_submodule(path)
    assert enc.layout_.layers == tuple(range(len(blocks)))
    vcfg = model.config.vision_config
    n_patches = None if flat else (vcfg.image_size // vcfg.patch_size) ** 2
    for i, s in enumerate(samples):
        seen = []
        handles = [b.register_forward_hook(lambda m, a, o: seen.append(
            (o[0] if isinstance(o, tuple) else o).detach())) for b in blocks]
        try:
            _alone(model, processor, s)
        finally:
            for h in handles:
                h.remove()
        for layer, out in enumerate(seen):
            out = out.numpy()
            if flat:  # (patches, hidden)
                patches = out
            else:  # (tiles, tokens, hidden): class tokens first in each tile
                patches = out[:, out.shape[1] - n_patches:].reshape(-1, out.shape[-1])
            np.testing.assert_allclose(acts[i, layer, 0], patches.mean(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(acts[i, layer, 1], patches.max(0), rtol=1e-4, atol=1e-5)
            if not flat:
                np.testing.assert_allclose(acts[i, layer, 2], out[0, 0], rtol=1e-4, atol=1e-5)
    if flat:
        bad = TransformerActivationEncoder(model, processor=processor, parts="vision.resid_post",
                                           token_pooling="cls").fit()
        with pytest.raises(ValueError, match="only mean, max and min"):
            bad.transform(samples[:1])


def test_folder_load_pickle_stream_and_cli(tmp_path, monkeypatch, capsys):
    import pickle

    import pandas as pd

    from embetter_plug import load_activations
    from embetter_plug.cli import main
    from embetter_plug.testing import save_tiny_vlm

    folder = save_tiny_vlm("llava", tmp_path / "llava")
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(_img(i)).save(tmp_path / "imgs" / f"{i}.png")
    df = pd.DataFrame({"text": ["a cat", "", "the dog"], "image": ["imgs/0.png", "imgs/1.png", ""],
                       "label": [0, 1, 0]})
    df.to_csv(tmp_path / "data.csv", index=False)
    samples = [{"text": "a cat", "image": str(tmp_path / "imgs/0.png")},
               {"image": str(tmp_path / "imgs/1.png")}, {"text": "the dog"}]
    enc = TransformerActivationEncoder(str(folder), layers=[0, 1],
                                       token_pooling=["image:mean", "lasttoken"]).fit()
    assert type(enc.processor_).__name__ == "LlavaProcessor" and "processor" in enc.identity_
    direct = enc.transform(samples)
    again = pickle.loads(pickle.dumps(enc)).transform(samples)  # processor reloaded from folder
    np.testing.assert_allclose(again, direct, rtol=1e-5, atol=1e-6)
    enc.extract_to(tmp_path / "stream", samples, shard_size=2)
    streamed, layout = load_activations(tmp_path / "stream")
    np.testing.assert_allclose(np.asarray(streamed), direct, rtol=1e-5, atol=1e-6)
    monkeypatch.chdir(tmp_path / "imgs")  # relative image paths are read from the CSV's folder
    rc = main(["extract", "--data", str(tmp_path / "data.csv"), "--image-col", "image",
               "--model", str(folder), "--layers", "0,1", "--token-pooling",
               "image:mean,lasttoken", "--out", str(tmp_path / "cli.npz"), "--quiet"])
    assert rc == 0
    from_cli, _ = load_activations(tmp_path / "cli.npz")
    np.testing.assert_allclose(np.asarray(from_cli), direct, rtol=1e-5, atol=1e-6)
    rc = main(["attention", "--data", str(tmp_path / "data.csv"), "--image-col", "image",
               "--model", str(folder), "--metrics", "attn_image", "--query-reduction", "text:mean",
               "--out", str(tmp_path / "att")])
    summary = pd.read_csv(tmp_path / "att" / "attention_metrics.csv")
    assert rc == 0 and set(summary["metric"]) == {"attn_image"}
    assert summary["mean"].between(0, 1).all() and summary["mean"].max() > 0
    df.loc[0, "image"] = "imgs/missing.png"
    df.to_csv(tmp_path / "bad.csv", index=False)
    capsys.readouterr()
    rc = main(["extract", "--data", str(tmp_path / "bad.csv"), "--image-col", "image",
               "--model", str(folder), "--out", str(tmp_path / "bad.npz"), "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and "no image file 'imgs/missing.png'" in err and "line(s) [2]" in err
    assert not (tmp_path / "bad.npz").exists()


def test_heads_and_attention_to_image_tokens():
    """Per-head parts and metrics on the language stack of a VLM: heads of ``attn_result`` sum
    to ``attn_out`` (the projection has no bias), and ``attn_image`` equals the eager pattern's
    mass on image keys."""
    import copy

    model, processor = make_tiny_vlm("llava")
    samples = [s for s in _samples("llava")]
    pool = ["text:mean", "lasttoken"]
    heads = TransformerActivationEncoder(model, processor=processor, parts="attn_result",
                                         layers=[0, 1], token_pooling=pool).fit_transform(samples)
    whole = TransformerActivationEncoder(model, processor=processor, parts="attn_out",
                                         layers=[0, 1], token_pooling=pool).fit_transform(samples)
    n_heads = model.config.text_config.num_attention_heads
    summed = heads.reshape(len(samples), 2, n_heads, len(pool), -1).sum(2)
    np.testing.assert_allclose(summed, whole, rtol=1e-4, atol=1e-5)
    metric = TransformerActivationEncoder(model, processor=processor, parts="attn_image",
                                          layers=[1], token_pooling="text:mean")
    got = metric.fit_transform(samples)[:, 0, :, 0]  # (n, heads)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    for i, s in enumerate(samples):
        from embetter_plug.inputs.images import load_image

        kwargs = dict(text=[_prompt(processor, s["text"], "image" in s)], return_tensors="pt")
        if "image" in s:
            kwargs["images"] = [load_image(s["image"])]
        inputs = processor(**kwargs)
        with torch.no_grad():
            att = eager(**inputs, output_attentions=True).attentions[1][0].numpy()  # (H, S, S)
        img = (inputs["input_ids"][0] == model.config.image_token_id).numpy()
        want = att[:, ~img][:, :, img].sum(-1).mean(-1)  # text queries' mass on image keys
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)


def test_chameleon_has_no_tower():
    model, processor = make_tiny_vlm("chameleon")
    with pytest.raises(ValueError, match="no vision tower.*image:mean"):
        TransformerActivationEncoder(model, processor=processor, parts="vision.resid_post").fit()


def test_image_modes_are_read_as_rgb():
    """Grey, palette and RGBA images become RGB (alpha on white) before the processor."""
    from embetter_plug.inputs.images import load_image

    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    assert load_image(Image.fromarray(grey)).mode == "RGB"
    np.testing.assert_array_equal(np.asarray(load_image(Image.fromarray(grey))), rgb)
    np.testing.assert_array_equal(np.asarray(load_image(grey)), rgb)
    np.testing.assert_array_equal(np.asarray(load_image(grey / 255.0)), rgb)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent: white shows
    np.testing.assert_array_equal(np.asarray(load_image(rgba)), np.full((8, 8, 3), 255))
    pal = Image.fromarray(rgb).convert("P")
    assert load_image(pal).mode == "RGB"
    model, processor = make_tiny_vlm("llava")
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0],
                                       token_pooling="image:mean").fit()
    a = enc.transform([{"text": "x", "image": Image.fromarray(grey)}, {"text": "x", "image": rgb}])
    np.testing.assert_allclose(a[0], a[1], rtol=1e-5, atol=1e-6)


def test_processor_settings_key_the_cache(tmp_path):
    import copy

    from embetter_plug import ActivationCache

    model, processor = make_tiny_vlm("llava")
    other = copy.deepcopy(processor)
    other.image_processor.image_mean = [0.0, 0.0, 0.0]
    sample = [{"text": "a cat", "image": _img(0)}]
    a = TransformerActivationEncoder(model, processor=processor, layers=[0],
                                     cache=tmp_path / "c").fit()
    b = TransformerActivationEncoder(model, processor=other, layers=[0],
                                     cache=tmp_path / "c").fit()
    assert a.identity_["processor"] != b.identity_["processor"]
    x, y = a.transform(sample), b.transform(sample)
    assert len(ActivationCache(tmp_path / "c")) == 2 and not np.allclose(x, y)


def test_online_probes_and_include_prompt_on_samples():
    from embetter_plug import OnlineProbes

    model, processor = make_tiny_vlm("llava")
    rows = [{"text": f"text {i}", "image": _img(i)} for i in range(12)]
    y = np.arange(12) % 2
    enc = TransformerActivationEncoder(model, processor=processor, token_pooling="image:mean")
    probes = OnlineProbes(enc, random_state=0).fit(rows, y)
    assert probes.predict(rows).shape == (12,)
    bad = TransformerActivationEncoder(model, processor=processor, include_prompt=False).fit()
    with pytest.raises(ValueError, match="include_prompt=False applies to plain texts"):
        bad.transform(rows[:1])


def test_cli_probe_with_image_column(tmp_path):
    import pandas as pd

    from embetter_plug.cli import main
    from embetter_plug.testing import save_tiny_vision

    folder = save_tiny_vision("vit", tmp_path / "vit")
    from sklearn.datasets import load_digits

    digits = load_digits()
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(40):
        Image.fromarray((digits.images[i] * 16).astype("uint8")).save(tmp_path / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "label": int(digits.target[i] % 2)})
    pd.DataFrame(rows).to_csv(tmp_path / "digits.csv", index=False)
    rc = main(["probe", "--data", str(tmp_path / "digits.csv"), "--image-col", "image",
               "--model", str(folder), "--cv", "2", "--token-pooling", "cls,image:mean",
               "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    table = pd.read_csv(tmp_path / "run" / "results.csv")
    assert {"cls", "image:mean"} <= set(table["pooling"]) and "resid_post" in set(table["part"])


def test_threads_share_one_encoder():
    from concurrent.futures import ThreadPoolExecutor

    model, processor = make_tiny_vlm("llava")
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0],
                                       token_pooling=["image:mean", "text:mean"]).fit()
    groups = [[{"text": f"group {g} item {i}", "image": _img(10 * g + i)} for i in range(3)]
              for g in range(4)]
    alone = [enc.transform(rows) for rows in groups]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(enc.transform, groups))
    for a, b in zip(alone, together):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_processor_refusal_names_the_sample():
    model, processor = make_tiny_vlm("paligemma")  # its processor needs an image with every text
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0]).fit()
    with pytest.raises(ValueError, match=r"the sample with text 'only text', no image: PaliGemmaProcessor refused"):
        enc.transform([{"text": "a", "image": _img(0)}, {"text": "only text"}])


def test_samples_over_max_length_are_an_error_before_the_forward(counted):
    model, processor, calls = counted
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0],
                                       max_length=20).fit()
    with pytest.raises(ValueError, match=r"1 sample\(s\) need more than max_length=20 .*"
                                         r"'a picture of cats'"):
        enc.transform([{"text": "a picture of cats", "image": _img(0)}])
    assert calls == []


def _dual(kind):
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor)

    from embetter_plug.testing import make_tokenizer

    tok = make_tokenizer("bpe")
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, pad_token_id=tok.pad_token_id or 0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, image_size=32, patch_size=8)
    torch.manual_seed(0)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        return model.eval(), CLIPProcessor(image_processor=ip, tokenizer=tok)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    ip = SiglipImageProcessor(size={"height": 32, "width": 32})
    return model.eval(), SiglipProcessor(image_processor=ip, tokenizer=tok)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_dual_encoders_read_texts_and_images_apart(kind):
    """CLIP and SigLIP: plain texts through the text stack, images alone through the tower
    (which runs on its own), each against the stack's own hidden states."""
    from embetter_plug.arch import vision as _vision
    from embetter_plug.inputs.images import load_image

    model, processor = _dual(kind)
    assert _vision.is_dual_encoder(model)
    images = [_img(0), _img(1, (40, 28))]
    tower = TransformerActivationEncoder(model, processor=processor, parts="vision.resid_post",
                                         token_pooling=["first", "image:mean"])
    acts = tower.fit_transform(images)
    assert tower.layout_.layers == (0, 1, 2)
    for i, im in enumerate(images):
        pix = processor.image_processor(images=[load_image(im)], return_tensors="pt")
        with torch.no_grad():
            hs = model.vision_model(pixel_values=pix["pixel_values"],
                                    output_hidden_states=True).hidden_states
        for layer in (0, 1):
            h = hs[layer + 1][0].numpy()
            np.testing.assert_allclose(acts[i, layer, 0], h[0], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(acts[i, layer, 1], h[-16:].mean(0), rtol=1e-4, atol=1e-5)
    texts = ["a photo of a cat", "two dogs"]
    words = TransformerActivationEncoder(model, processor=processor, layers=[0],
                                         token_pooling="mean").fit_transform(texts)
    for i, t in enumerate(texts):
        ids = torch.tensor([processor.tokenizer(t)["input_ids"]])
        with torch.no_grad():
            h = model.text_model(input_ids=ids, output_hidden_states=True).hidden_states[1]
        np.testing.assert_allclose(words[i, 0, 0], h[0].mean(0).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="dual encoder"):
        TransformerActivationEncoder(model, processor=processor).fit().transform(
            [{"text": "a cat", "image": images[0]}])


def test_cluster_extraction_refuses_a_vlm_object_before_starting(tmp_path):
    """A VLM object's forward hooks do not survive the trip to Ray actors: refused before Ray
    starts, pointing to a folder (image samples themselves go to the cluster)."""
    from embetter_plug import extract_distributed

    model, processor = make_tiny_vlm("llava")
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0]).fit()
    with pytest.raises(ValueError, match="LlavaForConditionalGeneration object does not "
                                         "survive.*save_pretrained"):
        extract_distributed(enc, tmp_path / "o", [{"text": "a", "image": _img(0)}])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["llava", "gemma3", "qwen2_vl"])
def test_attention_patterns_of_samples_equal_eager_attentions(kind):
    import copy

    from embetter_plug.attention.patterns import attention_patterns

    model, processor = make_tiny_vlm(kind)
    samples = [s for s in _samples(kind)][:3]
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0]).fit()
    pats = attention_patterns(enc, None, samples, layers=[0, 1], batch_size=2)
    direct = attention_patterns(model, processor, samples[:1], layers=[0, 1])
    np.testing.assert_allclose(direct[0].pattern, pats[0].pattern, rtol=1e-4, atol=1e-5)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    for pat, s in zip(pats, samples):
        from embetter_plug.inputs.images import load_image

        kwargs = dict(text=[_prompt(processor, s["text"], "image" in s)], return_tensors="pt")
        if "image" in s:
            kwargs["images"] = [load_image(s["image"])]
        inputs = processor(**kwargs)
        with torch.no_grad():
            att = eager(**inputs, output_attentions=True).attentions
        want = np.stack([a[0].numpy() for a in att[:2]])
        assert pat.pattern.shape == want.shape and len(pat.tokens) == want.shape[-1]
        np.testing.assert_allclose(pat.pattern, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(pat.pattern.sum(-1), 1, atol=1e-5)


def test_cli_probe_report_shows_a_samples_pattern(tmp_path):
    import pandas as pd

    from embetter_plug.cli import main
    from embetter_plug.testing import save_tiny_vlm

    folder = save_tiny_vlm("llava", tmp_path / "llava")
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(12):
        Image.fromarray(_img(i)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"text": f"picture {i}", "image": f"img/{i}.png", "label": i % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    rc = main(["probe", "--data", str(tmp_path / "pairs.csv"), "--image-col", "image",
               "--model", str(folder), "--cv", "2", "--parts", "attn_result",
               "--token-pooling", "image:mean", "--pattern-text", "3",
               "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    html = (tmp_path / "run" / "report.html").read_text()
    # the sample's pattern, its 16 image tokens first, grouped into one entry
    assert '"picture 3", "tokens": ["\\u003c16 x \\u003cimage>>"' in html
    assert 'id="image-attention"' in html and '"text": "picture 3"' in html  # on the picture


def test_pipeline_cross_validates_on_samples():
    """The whole flow on images: encoder, LayerPooler and a classifier in one Pipeline that
    cross_val_score and clone handle, with the samples as X."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    from embetter_plug import LayerPooler

    model, processor = make_tiny_vlm("llava")
    rng = np.random.default_rng(0)
    y = np.arange(16) % 2
    rows = [{"text": "a square", "image": np.full((24, 24, 3), 40 + 170 * k, np.uint8)
             + rng.integers(0, 30, (24, 24, 3)).astype(np.uint8)} for k in y]
    pipe = make_pipeline(
        TransformerActivationEncoder(model, processor=processor, token_pooling="image:mean"),
        LayerPooler(layers=[0]), LogisticRegression(max_iter=500))
    scores = cross_val_score(pipe, rows, y, cv=2)
    assert scores.mean() > 0.9  # dark vs bright squares
