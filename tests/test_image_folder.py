"""Labelled image folders (class per folder, a label hierarchy) in, and several label columns
probed on one extraction: the reader against the files on disk, `probe --image-dir` and
`extract --image-dir` against in-process extraction, per-label results against separate runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from embetter_plug import TransformerActivationEncoder, probe_layers, read_image_folder
from embetter_plug.testing import IMAGE_FOLDER_CLASSES, save_image_folder

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return save_image_folder(tmp_path_factory.mktemp("imgs") / "train", per_class=8)


def test_reader_lists_files_by_class_with_a_prompt_and_two_levels(image_dir):
    samples, labels = read_image_folder(image_dir, prompt="What is it?",
                                        hierarchy=image_dir / "hierarchy.csv")
    files = sorted((p.parent.name, p.name) for p in image_dir.glob("*/*.png"))
    assert [tuple(p.split("/")) for p in labels["path"]] == files  # sorted class, then file
    assert list(labels.columns) == ["path", "label", "level_1"]
    assert labels["label"].tolist() == [c for c, _ in files]
    assert labels["level_1"].tolist() == [IMAGE_FOLDER_CLASSES[c] for c, _ in files]
    assert all(s.text == "What is it?" for s in samples)
    assert [str(s.image) for s in samples] == [str(image_dir / p) for p in labels["path"]]
    # the same hierarchy as a JSON tree, and as a dict; images alone without a prompt
    tree = {"red": ["red_dots", "red_stripes"], "blue": {"blue_dots": None, "blue_stripes": []}}
    (image_dir.parent / "tree.json").write_text(json.dumps(tree))
    alone, from_json = read_image_folder(image_dir, hierarchy=image_dir.parent / "tree.json")
    pd.testing.assert_frame_equal(from_json, labels)
    assert all(s.text is None for s in alone)
    _, from_dict = read_image_folder(image_dir, hierarchy=IMAGE_FOLDER_CLASSES)
    pd.testing.assert_frame_equal(from_dict, labels)


def test_deeper_hierarchies_give_a_column_per_level(image_dir, tmp_path):
    parents = {"red_dots": "red", "red_stripes": "red", "blue_dots": "blue",
               "blue_stripes": "blue_other", "blue_other": "blue", "red": "colour",
               "blue": "colour"}
    _, labels = read_image_folder(image_dir, hierarchy=parents)
    per_class = labels.drop_duplicates("label").set_index("label")
    assert list(per_class.columns) == ["path", "level_1", "level_2", "level_3"]
    assert per_class.loc["blue_stripes", ["level_1", "level_2", "level_3"]].tolist() == [
        "colour", "blue", "blue_other"]
    # a shallower branch keeps its lowest ancestor on the levels below it
    assert per_class.loc["red_dots", ["level_1", "level_2", "level_3"]].tolist() == [
        "colour", "red", "red"]


@pytest.mark.parametrize("change, exc, match", [
    ("unreadable", ValueError, r"red_dots/bad\.png' is not (a readable image|an image file)"),
    ("missing_parent", ValueError, r"\['blue_dots'\] have no parent in the hierarchy"),
    ("cycle", ValueError, "has a cycle through"),
    ("empty_class", ValueError, r"\['empty'\] .* hold no image files"),
])
def test_bad_folders_and_hierarchies_are_named_before_any_model_work(image_dir, tmp_path,
                                                                    change, exc, match):
    import shutil

    root = shutil.copytree(image_dir, tmp_path / "root")
    hierarchy = dict(IMAGE_FOLDER_CLASSES)
    if change == "unreadable":
        (root / "red_dots" / "bad.png").write_bytes(b"not a picture")
    elif change == "missing_parent":
        del hierarchy["blue_dots"]
    elif change == "cycle":
        hierarchy.update(red="blue", blue="red")
    else:
        (root / "empty").mkdir()
    with pytest.raises(exc, match=match):
        read_image_folder(root, hierarchy=hierarchy)


def test_a_folder_without_class_folders_is_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), "uint8")).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match=r"no class folders \(only loose images"):
        read_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image_folder(tmp_path / "nowhere")


def test_several_targets_equal_separate_probe_layers_runs():
    rng = np.random.default_rng(0)
    fine = np.repeat([0, 1, 2, 3], 15)
    coarse = fine // 2
    size = rng.normal(size=60)  # a number: a regression target among labels
    X = rng.normal(size=(60, 3, 2, 6))
    X[:, 1, 0, 0] += 2 * fine
    X[:, 2, 1, 1] += 2 * size
    y = pd.DataFrame({"coarse": coarse, "fine": fine, "size": size})
    together = probe_layers(X, y, cv=3, random_state=0)
    assert list(together) == ["coarse", "fine", "size"]
    for name in y:
        alone = probe_layers(X, y[name].to_numpy(), cv=3, random_state=0)
        pd.testing.assert_frame_equal(together[name].frame_, alone.frame_)
        assert together[name].task == alone.task
    assert together["size"].task == "regression" and together["fine"].best_ == (1, "part0")
    as_dict = probe_layers(X, {"fine": fine}, cv=3, random_state=0)
    pd.testing.assert_frame_equal(as_dict["fine"].frame_, together["fine"].frame_)
    with pytest.raises(ValueError, match="no columns"):
        probe_layers(X, {}, cv=3)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    from embetter_plug.testing import save_tiny_vlm

    return save_tiny_vlm("llava", tmp_path_factory.mktemp("vlm") / "llava")


def test_cli_probe_image_dir_with_two_label_levels_extracts_once(image_dir, vlm, tmp_path,
                                                                 monkeypatch, capsys):
    """`probe --image-dir --label-col level_1,label`: one forward per image for both labels,
    each label's results equal to probe_layers on the in-process activations, a table and a
    plot panel per label, both reports on one page."""
    from embetter_plug.cli import main
    from embetter_plug.probe.offline import default_probe

    forwarded = []
    encode = TransformerActivationEncoder.encode

    def counting(self, inputs):
        forwarded.extend(inputs)
        return encode(self, inputs)

    monkeypatch.setattr(TransformerActivationEncoder, "encode", counting)
    rc = main(["probe", "--image-dir", str(image_dir), "--prompt", "What is it?", "--hierarchy",
               str(image_dir / "hierarchy.csv"), "--label-col", "level_1,label", "--model",
               str(vlm), "--layers", "0,1", "--parts", "resid_post", "--token-pooling",
               "image:mean", "--cv", "3", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    samples, labels = read_image_folder(image_dir, prompt="What is it?",
                                        hierarchy=image_dir / "hierarchy.csv")
    assert len(forwarded) == len(samples) == 32  # one extraction for both label columns
    out = capsys.readouterr().out
    assert "--label-col 'level_1':" in out and "--label-col 'label':" in out
    enc = TransformerActivationEncoder(str(vlm), layers=[0, 1], token_pooling="image:mean")
    X = enc.fit(samples).transform(samples)
    table = pd.read_csv(tmp_path / "run" / "results.csv", keep_default_na=False)
    assert list(dict.fromkeys(table["target"])) == ["level_1", "label"]
    for col in ("level_1", "label"):
        ref = probe_layers(X, labels[col].to_numpy(), default_probe("classification"), cv=3,
                           random_state=0).frame_
        got = table[(table["target"] == col) & (table["part"] == "resid_post")]
        want = ref[ref["part"] == "resid_post"]
        np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(),
                                   rtol=1e-4, atol=1e-4)
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count("<iframe") == 2 and "level_1" in page


def test_cli_extract_image_dir_equals_in_process_and_writes_labels(image_dir, vlm, tmp_path,
                                                                   capsys):
    from embetter_plug import load_activations
    from embetter_plug.cli import main

    rc = main(["extract", "--image-dir", str(image_dir), "--hierarchy",
               str(image_dir / "hierarchy.csv"), "--model", str(vlm), "--layers", "0",
               "--token-pooling", "image:mean", "--limit", "10", "--out",
               str(tmp_path / "acts.npz"), "--quiet"])
    assert rc == 0
    samples, labels = read_image_folder(image_dir, hierarchy=image_dir / "hierarchy.csv")
    X, _ = load_activations(tmp_path / "acts.npz")
    enc = TransformerActivationEncoder(str(vlm), layers=[0], token_pooling="image:mean").fit()
    np.testing.assert_allclose(X, enc.transform(samples[:10]), rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "acts.npz.labels.csv"),
                                  labels.iloc[:10])
    assert main(["extract", "--image-dir", str(image_dir), "--data", "x.csv", "--out",
                 str(tmp_path / "o")]) == 2
    assert "drop --data" in capsys.readouterr().err
    assert main(["extract", "--hierarchy", "h.csv", "--out", str(tmp_path / "o")]) == 2
    assert "--hierarchy applies to --image-dir" in capsys.readouterr().err


def test_cli_probe_two_label_columns_of_a_csv_with_max_samples(tmp_path, capsys):
    """--max-samples keeps every class of both label columns (stratified on their pairs)."""
    from embetter_plug import load_builtin_dataset
    from embetter_plug.cli import main
    from embetter_plug.testing import save_tiny_model

    model = save_tiny_model("gpt2", tmp_path / "gpt2")
    texts = list(dict.fromkeys(load_builtin_dataset()["text"]))[:120]
    fine = np.arange(120) % 4
    pd.DataFrame({"text": texts, "fine": fine, "coarse": np.where(fine < 2, "a", "b")}).to_csv(
        tmp_path / "d.csv", index=False)
    rc = main(["probe", "--data", str(tmp_path / "d.csv"), "--label-col", "coarse,fine",
               "--max-samples", "40", "--cv", "2", "--model", str(model), "--parts",
               "resid_post", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    assert "encoding 40 texts" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "run" / "results.csv")
    assert list(dict.fromkeys(table["target"])) == ["coarse", "fine"]
    assert main(["probe", "--data", str(tmp_path / "d.csv"), "--label-col", "coarse,nope",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--label-col 'nope' is not a column" in capsys.readouterr().err
