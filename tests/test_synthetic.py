"""The synthetic catalog: layout, determinism, and images that show what the text says."""
import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

from mmf_fashionvil import synthetic

SIZE = 48


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return synthetic.generate_catalog(tmp_path_factory.mktemp("a") / "c", seed=5,
                                      num_products=20, image_size=SIZE)


def load(catalog, relative):
    with open(os.path.join(catalog, relative)) as f:
        return json.load(f)


def test_same_seed_same_bytes_other_seed_differs(catalog, tmp_path):
    again = synthetic.generate_catalog(tmp_path / "again", seed=5, num_products=20, image_size=SIZE)
    other = synthetic.generate_catalog(tmp_path / "other", seed=6, num_products=20, image_size=SIZE)
    comparison = filecmp.dircmp(catalog, again)
    stack, differing = [comparison], []
    while stack:
        node = stack.pop()
        differing += node.diff_files + node.left_only + node.right_only
        stack += node.subdirs.values()
    assert differing == []
    assert load(catalog, "datasets/FashionGen/train_info.json") != load(
        other, "datasets/FashionGen/train_info.json")


def test_fashiongen_entries_follow_the_preprocessed_layout(catalog):
    for split in ("train", "val"):
        entries = load(catalog, f"datasets/FashionGen/{split}_info.json")
        assert entries
        for entry in entries:
            assert set(entry) == {"id", "images", "title", "description", "attributes_id",
                                  "category_id", "subcategory_id"}
            for path in entry["images"]:
                with Image.open(os.path.join(catalog, "datasets/FashionGen", path)) as image:
                    assert image.size == (SIZE, SIZE)
    train = load(catalog, "datasets/FashionGen/train_info.json")
    views = [len(e["images"]) for e in train]
    assert 1 in views and max(views) > 1  # single-view and multi-view products


def test_text_names_the_attributes_and_image_shows_the_colour(catalog):
    """Plain items: the most common non-background pixel colour is the named colour."""
    categories = load(catalog, "datasets/FashionGen/categories.json")
    checked = 0
    for entry in load(catalog, "datasets/FashionGen/train_info.json"):
        colour = entry["title"].split()[0]
        assert colour in synthetic.COLOURS
        assert categories["category"][entry["category_id"]] in entry["title"]
        assert categories["subcategory"][entry["subcategory_id"]] in entry["title"]
        if entry["description"].split(".")[0].endswith("plain"):
            pixels = np.asarray(Image.open(
                os.path.join(catalog, "datasets/FashionGen", entry["images"][0]))).reshape(-1, 3)
            centre = pixels.reshape(SIZE, SIZE, 3)[SIZE // 2, SIZE // 2].astype(int)
            palette = {name: np.array(rgb) for name, rgb in synthetic.COLOURS.items()}
            nearest = min(palette, key=lambda n: np.abs(palette[n] - centre).sum())
            assert nearest == colour
            checked += 1
    assert checked > 0


def test_striped_images_have_more_vertical_change_than_plain(tmp_path):
    import random

    attrs = {"category": "dress", "subcategory": "maxi", "colour": "red"}
    def energy(pattern):
        image = synthetic._draw_product(dict(attrs, pattern=pattern), 64, random.Random(0), 0)
        array = np.asarray(image).astype(float)
        return np.abs(np.diff(array[16:48, 24:40], axis=0)).mean()
    assert energy("striped") > 5 * energy("plain")


def test_fashioniq_targets_differ_in_what_the_captions_say(catalog):
    for name in synthetic.FASHIONIQ_CATEGORIES:
        for split in ("train", "val"):
            triplets = load(catalog, f"datasets/FashionIQ/captions/cap.{name}.{split}.json")
            images = set(load(catalog, f"datasets/FashionIQ/image_splits/split.{name}.{split}.json"))
            for t in triplets:
                assert {t["candidate"], t["target"]} <= images
                assert len(t["captions"]) == 2 and all(t["captions"])
                for asin in (t["candidate"], t["target"]):
                    assert os.path.isfile(os.path.join(catalog, "datasets/FashionIQ/images", asin + ".png"))
                words = set(t["captions"][0].replace(" and ", " ").split()) - {"is"}
                assert words and words <= set(synthetic.COLOURS) | set(synthetic.PATTERNS)


def test_polyvore_outfits_ocir_and_disjointness(catalog):
    root = "datasets/PolyvoreOutfits"
    metadata = load(catalog, f"{root}/polyvore_item_metadata.json")
    assert {m["category_id"] for m in metadata.values()} <= set(synthetic.POLYVORE_CATEGORY_IDS.values())
    for name in ("disjoint", "nondisjoint"):
        train = load(catalog, f"{root}/ocir_{name}_train.json")
        test = load(catalog, f"{root}/ocir_{name}_test.json")
        for entry in train + test:
            assert entry["blank"] not in entry["question"]
            for item in entry["question"] + [entry["blank"]]:
                assert item in metadata
                assert os.path.isfile(os.path.join(catalog, root, "images", f"{item}.jpg"))
        train_items = {i for e in train for i in e["question"] + [e["blank"]]}
        test_items = {i for e in test for i in e["question"] + [e["blank"]]}
        if name == "disjoint":
            assert not train_items & test_items
        else:
            assert train_items & test_items


def test_outfits_share_a_colour_family(catalog):
    metadata = load(catalog, "datasets/PolyvoreOutfits/polyvore_item_metadata.json")
    family_of = {c: f for f, colours in synthetic.COLOUR_FAMILIES.items() for c in colours}
    for outfit in load(catalog, "datasets/PolyvoreOutfits/disjoint/train.json"):
        families = {family_of[metadata[i["item_id"]]["title"].split()[0]] for i in outfit["items"]}
        assert len(families) == 1


def test_vocabulary_covers_every_text(catalog):
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab=os.path.join(catalog, "vocab", "vocab.txt"))
    texts = []
    for split in ("train", "val"):
        texts += [e["title"] + ". " + e["description"]
                  for e in load(catalog, f"datasets/FashionGen/{split}_info.json")]
    for name in synthetic.FASHIONIQ_CATEGORIES:
        texts += [", ".join(t["captions"]) for t in
                  load(catalog, f"datasets/FashionIQ/captions/cap.{name}.train.json")]
    for text in texts:
        assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        synthetic.generate_catalog(tmp_path, num_products=5, image_size=32)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
