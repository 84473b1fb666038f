"""Bad raw releases given to python -m mmf_fashionvil.prepare: each stops with an error naming
the file, the entry and the problem, and leaves no dataset folder (nor a partial one)."""
import json
import os
import re

import h5py
import numpy as np
import pytest
from PIL import Image

from mmf_fashionvil.tools.prepare.cli import main


def run_prepare(*args):
    """The error message of a failing prepare run."""
    with pytest.raises(SystemExit) as exit:
        main([str(a) for a in args])
    return str(exit.value.code)


def nothing_written(out, name):
    datasets = out / "datasets"
    return not datasets.exists() or os.listdir(datasets) == []


# ----------------------------------------------------------------------------- FashionGen
def fashiongen_rows(product_ids, names=None, categories=None):
    n = len(product_ids)
    names = names or [f"red dress {p}" for p in product_ids]
    return {
        "input_image": np.full((n, 8, 8, 3), 100, dtype=np.uint8),
        "input_productID": np.array(product_ids, dtype=np.int32).reshape(-1, 1),
        "input_name": np.array([s.encode() for s in names]).reshape(-1, 1),
        "input_description": np.array([b"a dress"] * n).reshape(-1, 1),
        "input_category": np.array([c.encode() for c in categories or ["DRESSES"] * n]).reshape(-1, 1),
        "input_subcategory": np.array([b"MINI"] * n).reshape(-1, 1),
        "input_pose": np.array([f"id_gridfs_{i}".encode() for i in range(n)]).reshape(-1, 1),
    }


def write_h5(path, columns):
    with h5py.File(path, "w") as f:
        for name, data in columns.items():
            f.create_dataset(name, data=data)


@pytest.fixture
def fashiongen_raw(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_h5(raw / "fashiongen_256_256_train.h5", fashiongen_rows([1, 1, 2]))
    write_h5(raw / "fashiongen_256_256_validation.h5", fashiongen_rows([3]))
    return raw


def test_a_latin1_fashiongen_file_is_read(fashiongen_raw, tmp_path):
    columns = fashiongen_rows([1, 2], names=["x", "y"])
    columns["input_name"] = np.array(["robe d'été".encode("latin-1"), b"plain"]).reshape(-1, 1)
    write_h5(fashiongen_raw / "fashiongen_256_256_train.h5", columns)
    main(["fashiongen", "--raw", str(fashiongen_raw), "--out", str(tmp_path / "out")])
    info = json.loads((tmp_path / "out/datasets/FashionGen/train_info.json").read_text())
    assert [e["title"] for e in info] == ["robe d'été", "plain"]
    assert info[0]["images"] == ["1_0.png"]
    assert (tmp_path / "out/datasets/FashionGen/train/1_0.png").is_file()


@pytest.mark.parametrize("problem", ["missing", "lengths", "disagree"])
def test_bad_fashiongen_files_are_named(fashiongen_raw, tmp_path, problem):
    path = fashiongen_raw / "fashiongen_256_256_train.h5"
    columns = fashiongen_rows([1, 1, 2])
    if problem == "missing":
        del columns["input_pose"]
        expected = r"missing dataset\(s\) \['input_pose'\]"
    elif problem == "lengths":
        columns["input_name"] = columns["input_name"][:2]
        expected = r"datasets of different lengths .*'input_name': 2"
    else:
        columns = fashiongen_rows([1, 1, 2], categories=["DRESSES", "TOPS", "DRESSES"])
        expected = (r"productID 1: row 1 has input_category 'TOPS', row 0 has 'DRESSES' "
                    r"\(the rows of one product must agree\)")
    write_h5(path, columns)
    message = run_prepare("fashiongen", "--raw", fashiongen_raw, "--out", tmp_path / "out")
    assert str(path) in message
    assert re.search(expected, message), message
    assert nothing_written(tmp_path / "out", "FashionGen")


# ---------------------------------------------------------------------------- Fashion200k
@pytest.fixture
def fashion200k_raw(tmp_path):
    raw = tmp_path / "raw"
    (raw / "labels").mkdir(parents=True)
    folder = raw / "women/dresses/mini/77"
    folder.mkdir(parents=True)
    for view in range(2):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / f"77_{view}.jpeg")
    lines = ["women/dresses/mini/77/77_0.jpeg\t0.9\tred mini dress\n",
             "women/dresses/mini/77/77_1.jpeg\t0.8\tred mini dress\n"]
    (raw / "labels/dress_train_detect_all.txt").write_text("".join(lines))
    (raw / "labels/dress_test_detect_all.txt").write_text(lines[0])
    return raw


@pytest.mark.parametrize("line, expected", [
    ("women/dresses/mini/77/77_1.jpeg\t0.8\n", r"line 2 has 2 tab-separated field\(s\), expected 3"),
    ("../../etc/passwd\t0.8\tred dress\n", r"line 2: image path '\.\./\.\./etc/passwd' is outside the image tree"),
    ("/etc/passwd\t0.8\tred dress\n", r"line 2: image path '/etc/passwd' is outside the image tree"),
])
def test_bad_fashion200k_label_lines_are_named(fashion200k_raw, tmp_path, line, expected):
    labels = fashion200k_raw / "labels/dress_train_detect_all.txt"
    labels.write_text(labels.read_text().splitlines(keepends=True)[0] + line)
    message = run_prepare("fashion200k", "--raw", fashion200k_raw, "--out", tmp_path / "out")
    assert str(labels) in message
    assert re.search(expected, message), message
    assert nothing_written(tmp_path / "out", "Fashion200k")


@pytest.mark.parametrize("store", ["files", "lmdb"])
def test_an_undecodable_image_is_named_with_its_label_line(fashion200k_raw, tmp_path, store):
    image = fashion200k_raw / "women/dresses/mini/77/77_1.jpeg"
    image.write_bytes(b"\xff\xd8 not really a jpeg")
    message = run_prepare("fashion200k", "--raw", fashion200k_raw, "--out", tmp_path / "out",
                          "--store", store)
    labels = fashion200k_raw / "labels/dress_train_detect_all.txt"
    assert f"{labels}: line 2: Image file '{image}' cannot be read" in message
    assert nothing_written(tmp_path / "out", "Fashion200k")


def test_a_title_image_mismatch_keeps_the_majority_description(fashion200k_raw, tmp_path):
    folder = fashion200k_raw / "women/dresses/mini/77"
    Image.new("RGB", (8, 8)).save(folder / "77_2.jpeg")
    labels = fashion200k_raw / "labels/dress_train_detect_all.txt"
    labels.write_text("women/dresses/mini/77/77_2.jpeg\t0.7\tblue maxi skirt\n" + labels.read_text())
    code = main(["fashion200k", "--raw", str(fashion200k_raw), "--out", str(tmp_path / "out")])
    assert code is None
    (product,) = json.loads((tmp_path / "out/datasets/Fashion200k/train_info.json").read_text())
    assert product == {"id": 77, "title": "red mini dress", "images": [
        "women/dresses/mini/77/77_2.jpeg", "women/dresses/mini/77/77_0.jpeg",
        "women/dresses/mini/77/77_1.jpeg"]}
    counts = json.loads((tmp_path / "out/datasets/Fashion200k/prepared.json").read_text())["counts"]
    assert counts["train"]["notes"] == {
        "products whose images carry different descriptions (kept the majority description)": 1}


# ------------------------------------------------------------------------------- Polyvore
def test_a_polyvore_outfit_naming_an_unknown_item_is_named(tmp_path):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    metadata = {"11": {"title": "red top", "category_id": 3},
                "12": {"title": "blue jeans", "category_id": 7}}
    (raw / "polyvore_item_metadata.json").write_text(json.dumps(metadata))
    for item in metadata:
        Image.new("RGB", (8, 8)).save(raw / "images" / f"{item}.jpg")
    outfit = {"set_id": "900", "items": [{"item_id": "11", "index": 1},
                                         {"item_id": "12", "index": 2}]}
    for version in ("disjoint", "nondisjoint"):
        (raw / version).mkdir()
        for split in ("train", "valid", "test"):
            (raw / version / f"{split}.json").write_text(json.dumps([outfit]))
    bad = dict(outfit, set_id="901", items=outfit["items"] + [{"item_id": "13", "index": 3}])
    (raw / "nondisjoint/valid.json").write_text(json.dumps([outfit, bad]))
    message = run_prepare("polyvore", "--raw", raw, "--out", tmp_path / "out")
    assert (f"{raw / 'nondisjoint/valid.json'}: outfit 901 names item '13', which is not in "
            "polyvore_item_metadata.json") in message
    assert nothing_written(tmp_path / "out", "PolyvoreOutfits")


# ------------------------------------------------------------------------------- FashionIQ
@pytest.fixture
def fashioniq_raw(tmp_path):
    raw = tmp_path / "raw"
    for folder in ("captions", "image_splits", "images"):
        (raw / folder).mkdir(parents=True)
    for asin in ("A1", "A2", "A3"):
        Image.new("RGB", (8, 8)).save(raw / "images" / f"{asin}.png")
    for category in ("dress", "shirt", "toptee"):
        (raw / f"image_splits/split.{category}.train.json").write_text(json.dumps(["A1", "A2", "A3"]))
        (raw / f"captions/cap.{category}.train.json").write_text(json.dumps([
            {"candidate": "A1", "target": "A2", "captions": ["is red", "has stripes"]},
            {"candidate": "A2", "target": "A3", "captions": ["is blue", "longer"],
             "target_id": 3, "fake_data": False}]))
    return raw


def test_fashioniq_caption_with_a_missing_image_is_named_or_skipped(fashioniq_raw, tmp_path):
    os.unlink(fashioniq_raw / "images/A3.png")
    split = fashioniq_raw / "image_splits/split.dress.train.json"
    message = run_prepare("fashioniq", "--raw", fashioniq_raw, "--out", tmp_path / "out")
    assert f"{split}: entry 2: image A3 has no file in {fashioniq_raw / 'images'}" in message
    assert nothing_written(tmp_path / "out", "FashionIQ")
    split.write_text(json.dumps(["A1", "A2"]))
    captions = fashioniq_raw / "captions/cap.dress.train.json"
    message = run_prepare("fashioniq", "--raw", fashioniq_raw, "--out", tmp_path / "out")
    assert (f"{captions}: entry 1: target image A3 has no file in "
            f"{fashioniq_raw / 'images'}") in message
    assert nothing_written(tmp_path / "out", "FashionIQ")
    # --skip-missing drops them (the extra keys of the kept entries stay)
    main(["fashioniq", "--raw", str(fashioniq_raw), "--out", str(tmp_path / "out"),
          "--skip-missing"])
    kept = json.loads((tmp_path / "out/datasets/FashionIQ/captions/cap.dress.train.json").read_text())
    assert kept == [{"candidate": "A1", "target": "A2", "captions": ["is red", "has stripes"]}]
    shirt = json.loads((tmp_path / "out/datasets/FashionIQ/captions/cap.shirt.train.json").read_text())
    assert len(shirt) == 1 and shirt[0]["candidate"] == "A1"
    counts = json.loads((tmp_path / "out/datasets/FashionIQ/prepared.json").read_text())["counts"]
    assert counts["dress.train"]["skipped"] == {
        "triplet whose image is missing or outside the split": 1}
    assert counts["shirt.train"]["skipped"] == {
        "split image without a file": 1, "triplet whose image is missing or outside the split": 1}


def test_a_caption_image_outside_its_split_is_named(fashioniq_raw, tmp_path):
    split = fashioniq_raw / "image_splits/split.toptee.train.json"
    split.write_text(json.dumps(["A1", "A2"]))
    message = run_prepare("fashioniq", "--raw", fashioniq_raw, "--out", tmp_path / "out")
    captions = fashioniq_raw / "captions/cap.toptee.train.json"
    assert f"{captions}: entry 1: target image A3 is not in {split}" in message


# ------------------------------------------------------------------------ options, pack
def test_store_options_are_checked(fashion200k_raw, tmp_path):
    message = run_prepare("fashion200k", "--raw", fashion200k_raw, "--out", tmp_path / "out",
                          "--encoding", "raw")
    assert "--encoding and --resize apply to --store lmdb" in message
    message = run_prepare("pack", "--out", tmp_path / "empty")
    assert "holds none of ['FashionGen', 'Fashion200k', 'PolyvoreOutfits', 'FashionIQ']" in message
