"""FashionGen and pre-training datasets read the pre-processed layout, name bad input,
and draw per-item randomness from (seed, epoch, index)."""
import json
import os
import shutil

import mmf  # noqa: F401  (compat must patch rc10 before our data modules import it)
import pytest
import torch

from mmf.common.registry import registry
from mmf_fashionvil.data.base import DataError, ProductDatabase
from mmf_fashionvil.data.processors import (
    IMAGE_NORMALIZATION_KEY,
    image_normalization,
    registered_image_normalization,
)
from mmf_fashionvil.data.fashiongen.builder import FashionGenBuilder
from mmf_fashionvil.data.pretraining.builder import FashionPretrainingBuilder

from helpers import build_dataset, catalog_dataset_config


def test_eval_items_are_every_image_of_every_product(tiny_catalog):
    config = catalog_dataset_config(FashionGenBuilder, tiny_catalog)
    val = build_dataset(FashionGenBuilder, config, "val")
    with open(os.path.join(tiny_catalog, "datasets/FashionGen/val_info.json")) as f:
        products = json.load(f)
    assert len(val) == sum(len(p["images"]) for p in products)
    ids = [int(val[i].id) for i in range(len(val))]
    assert ids == [p for p, product in enumerate(products) for _ in product["images"]]
    sample = val[0]
    assert sample.image.shape == (3, 56, 56)
    assert sample.input_ids[0] != sample.input_ids[1] and int(sample.input_mask.sum()) > 2


def test_item_randomness_depends_on_seed_epoch_and_index_only(tiny_catalog):
    config = catalog_dataset_config(FashionGenBuilder, tiny_catalog)
    train = build_dataset(FashionGenBuilder, config, "train")
    first = train[3].image
    torch.rand(10)  # the global RNG must not matter
    assert torch.equal(train[3].image, first)
    changed = False
    for epoch in range(1, 6):
        train.set_epoch(epoch)
        changed |= not torch.equal(train[3].image, first)
    assert changed


def test_the_builder_registers_its_image_normalisation_for_the_model(tiny_catalog):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    config = catalog_dataset_config(
        FashionGenBuilder, tiny_catalog,
        **{f"processors.{kind}_image_processor.params.{key}": value
           for kind in ("train", "eval") for key, value in (("mean", mean), ("std", std))})
    previous = registry.get(IMAGE_NORMALIZATION_KEY, no_warning=True)
    try:
        FashionGenBuilder().update_registry_for_model(config)
        assert registered_image_normalization() == (tuple(mean), tuple(std))
    finally:
        registry.register(IMAGE_NORMALIZATION_KEY, previous)
    # undoing that normalisation gives back pixels in [0, 1]; the defaults' would not.
    # (rc10 reuses a dataset's processors registered by an earlier build in this process.)
    for kind in ("text", "train_image", "eval_image"):
        registry.unregister(f"fashiongen_{kind}_processor")
    image = build_dataset(FashionGenBuilder, config, "val")[0].image
    pixels = image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    default_mean, default_std = image_normalization(None)
    wrong = image * torch.tensor(default_std)[:, None, None] + torch.tensor(default_mean)[:, None, None]
    assert not torch.allclose(wrong, pixels, atol=0.05)


def test_missing_data_dir_and_dataset_folder_are_named(tiny_catalog, tmp_path):
    config = catalog_dataset_config(FashionGenBuilder, tiny_catalog, data_dir=None)
    with pytest.raises(DataError, match="env.data_dir is not set"):
        build_dataset(FashionGenBuilder, config, "train")
    config = catalog_dataset_config(FashionGenBuilder, tmp_path)
    with pytest.raises(DataError, match=str(tmp_path)):
        build_dataset(FashionGenBuilder, config, "train")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        (json.dumps([{"id": 7, "title": "red dress"}]), r"entry 7 lacks key\(s\) \['images'\]"),
        (json.dumps([{"id": 8, "images": ["a.png"], "title": " ", "description": ""}]),
         "entry 8 has an empty caption"),
        (json.dumps([{"id": 9, "images": [], "title": "red dress"}]), "product 9 has no images"),
    ],
)
def test_malformed_annotations_name_file_and_entry(tmp_path, content, message):
    (tmp_path / "train_info.json").write_text(content)
    with pytest.raises(DataError, match=message) as error:
        ProductDatabase(str(tmp_path), "train_info.json")
    assert str(tmp_path / "train_info.json") in str(error.value)


def test_missing_and_corrupt_images_are_named(tiny_catalog, tmp_path):
    catalog = tmp_path / "catalog"
    shutil.copytree(tiny_catalog, catalog)
    info = json.loads((catalog / "datasets/FashionGen/val_info.json").read_text())
    # image paths are relative to the val split's image folder (the authors' layout)
    first, second = (catalog / "datasets/FashionGen/val" / info[0]["images"][0],
                     catalog / "datasets/FashionGen/val" / info[1]["images"][0])
    first.unlink()
    second.write_bytes(b"garbage")
    val = build_dataset(FashionGenBuilder, catalog_dataset_config(FashionGenBuilder, catalog),
                        "val")
    with pytest.raises(DataError, match="does not exist") as missing:
        val[0]
    assert str(first) in str(missing.value)
    index_of_second = len(info[0]["images"])
    with pytest.raises(DataError, match="cannot be read") as corrupt:
        val[index_of_second]
    assert str(second) in str(corrupt.value)


def test_pretraining_union_gives_two_different_views_and_attribute_labels(tiny_catalog, tmp_path):
    attributes = tmp_path / "attributes"
    attributes.mkdir()
    (attributes / "attributes.json").write_text(json.dumps({"vocabulary": ["dress", "red", "striped"]}))
    fashiongen = json.loads(open(os.path.join(tiny_catalog, "datasets/FashionGen/train_info.json")).read())
    multi = next(p for p in fashiongen if len(p["images"]) > 1)
    (attributes / "FashionGen_train_labels.json").write_text(json.dumps({str(multi["id"]): [0, 2]}))
    for source in ("Fashion200k", "PolyvoreOutfits"):
        (attributes / f"{source}_train_labels.json").write_text("{}")
    config = catalog_dataset_config(FashionPretrainingBuilder, tiny_catalog,
                                    attributes_dir=str(attributes))
    train = build_dataset(FashionPretrainingBuilder, config, "train")
    sizes = {}
    for source in ("FashionGen", "Fashion200k", "PolyvoreOutfits"):
        with open(os.path.join(tiny_catalog, "datasets", source, "train_info.json")) as f:
            sizes[source] = len(json.load(f))
    assert len(train) == sum(sizes.values())
    index = fashiongen.index(multi)
    sample = train[index]
    assert sample.attribute_labels.tolist() == [1.0, 0.0, 1.0]
    assert not torch.equal(sample.image, sample.image_view2)
    assert train[len(train) - 1].attribute_labels.sum() == 0
