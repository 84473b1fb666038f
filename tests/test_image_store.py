"""The LMDB image store: what it stores per encoding, the resize the transforms would do,
named errors for a missing store or key, worker processes, and one config switch
(image_store: files | lmdb) giving the same items."""
import json
import os
import shutil

import mmf  # noqa: F401  (compat before our data modules)
import numpy as np
import pytest
import torch
from PIL import Image

from mmf_fashionvil.data.fashiongen.builder import FashionGenBuilder
from mmf_fashionvil.data.processors import ImageTransform
from mmf_fashionvil.data.reading import (
    DataError, LMDBImageStore, LMDBImageWriter, store_path,
)
from mmf_fashionvil.tools.prepare.cli import main as prepare_main

from helpers import build_dataset, catalog_dataset_config


def gradient(width=40, height=30):
    """An RGB image whose every pixel differs from its neighbours (resizing changes it)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 6 % 256, y * 8 % 256, (x * y) % 256], -1).astype(np.uint8)


def write_store(folder, images, encoding, resize=None):
    """``images``: {relative path: file path or array}. Returns the store."""
    writer = LMDBImageWriter(store_path(str(folder)), encoding, resize)
    for relative, source in images.items():
        writer.add(relative, source)
    writer.close()
    return LMDBImageStore(store_path(str(folder)))


@pytest.mark.parametrize("encoding", ["raw", "png", "keep"])
def test_lossless_encodings_give_back_the_pixels(tmp_path, encoding):
    pixels = gradient()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    store = write_store(tmp_path / "images", {"sub/a.png": str(tmp_path / "a.png")}, encoding)
    assert np.array_equal(np.asarray(store.read("sub/a.png")), pixels)
    assert np.array_equal(np.asarray(store.read("./sub//a.png")), pixels)  # one key
    assert store.keys() == ["sub/a.png"] and "sub/a.png" in store and "b.png" not in store
    if encoding == "keep":  # the file's own bytes
        assert store._transaction().get(b"sub/a.png") == (tmp_path / "a.png").read_bytes()


def test_jpeg_is_close_and_raw_stores_height_width_then_pixels(tmp_path):
    pixels = gradient()
    store = write_store(tmp_path / "j", {"a": pixels}, "jpeg")
    assert np.abs(np.asarray(store.read("a")).astype(int) - pixels).mean() < 8
    store = write_store(tmp_path / "r", {"a": pixels}, "raw")
    value = store._transaction().get(b"a")
    assert value[:8] == (30).to_bytes(4, "little") + (40).to_bytes(4, "little")
    assert value[8:] == pixels.tobytes()


def test_a_resized_store_makes_the_transforms_resize_a_no_op(tmp_path):
    """Stored at shorter side 24, the eval transform (Resize(24), CenterCrop(20)) gives what
    it gives on the full-size image."""
    pixels = gradient(60, 45)
    store = write_store(tmp_path / "s", {"a": pixels}, "raw", resize=24)
    assert store.read("a").size == (32, 24)  # 60 x 45 -> shorter side 24: 32 x 24
    transform = ImageTransform({"mode": "eval", "resize": 24, "crop": 20})
    assert torch.equal(transform(store.read("a")), transform(Image.fromarray(pixels)))


def test_a_missing_store_and_a_missing_key_are_named(tmp_path):
    with pytest.raises(DataError, match=r"Image store '.*nowhere\.lmdb' does not exist .*prepare pack"):
        LMDBImageStore(str(tmp_path / "nowhere.lmdb"))
    store = write_store(tmp_path / "images", {"a.png": gradient()}, "png")
    with pytest.raises(DataError, match=rf"Image 'b\.png' of store '{store.path}' does not exist"):
        store.read("b.png")


def test_undecodable_bytes_are_refused_when_writing(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    writer = LMDBImageWriter(store_path(str(tmp_path / "images")), "keep")
    with pytest.raises(DataError, match=r"bad\.png' cannot be read"):
        writer.add("bad.png", str(tmp_path / "bad.png"))
    writer.abort()
    assert not os.path.exists(store_path(str(tmp_path / "images")))


def test_the_config_switch_reads_the_same_items_from_the_store_in_worker_processes(
        tiny_catalog, tmp_path):
    """pack writes one store per image folder; every item (train, with its seeded crop and
    flip, and val) is the same from files and from the store, also through a DataLoader with
    two worker processes (the environment opened in each)."""
    catalog = tmp_path / "catalog"
    shutil.copytree(os.path.join(tiny_catalog, "datasets/FashionGen"), catalog / "datasets/FashionGen")
    shutil.copytree(os.path.join(tiny_catalog, "vocab"), catalog / "vocab")
    prepare_main(["pack", "--out", str(catalog), "--encoding", "raw"])
    for folder in ("train", "val"):
        assert os.path.isfile(catalog / f"datasets/FashionGen/{folder}.lmdb/data.mdb")
    for split in ("train", "val"):
        files = build_dataset(FashionGenBuilder, catalog_dataset_config(FashionGenBuilder, catalog),
                              split)
        stored = build_dataset(FashionGenBuilder, catalog_dataset_config(
            FashionGenBuilder, catalog, image_store="lmdb"), split)
        stored[0]  # opened in this process before the workers fork
        loader = torch.utils.data.DataLoader(stored, batch_size=None, num_workers=2)
        for index, item in enumerate(loader):
            assert torch.equal(item.image, files[index].image), (split, index)
        assert index == len(files) - 1
    # Without the image files the store is all there is.
    shutil.rmtree(catalog / "datasets/FashionGen/val")
    stored = build_dataset(FashionGenBuilder, catalog_dataset_config(
        FashionGenBuilder, catalog, image_store="lmdb"), "val")
    assert stored[0].image.shape == (3, 56, 56)


def test_an_unknown_image_store_value_is_named(tiny_catalog):
    with pytest.raises(DataError, match=r"image_store='s3': expected one of \('files', 'lmdb'\)"):
        build_dataset(FashionGenBuilder, catalog_dataset_config(
            FashionGenBuilder, tiny_catalog, image_store="s3"), "val")


def test_a_dataset_whose_store_lacks_an_image_names_the_key_and_the_store(tiny_catalog, tmp_path):
    catalog = tmp_path / "catalog"
    shutil.copytree(os.path.join(tiny_catalog, "datasets/FashionGen"), catalog / "datasets/FashionGen")
    shutil.copytree(os.path.join(tiny_catalog, "vocab"), catalog / "vocab")
    first = json.loads((catalog / "datasets/FashionGen/val_info.json").read_text())[0]["images"][0]
    os.unlink(catalog / "datasets/FashionGen/val" / first)  # packed without it
    prepare_main(["pack", "--out", str(catalog), "--datasets", "FashionGen"])
    val = build_dataset(FashionGenBuilder, catalog_dataset_config(
        FashionGenBuilder, catalog, image_store="lmdb"), "val")
    store = store_path(str(catalog / "datasets/FashionGen/val"))
    with pytest.raises(DataError, match=rf"Image '{first}' of store '{store}' does not exist"):
        val[0]


def test_a_store_rewritten_in_the_same_process_is_read_anew(tmp_path):
    first = write_store(tmp_path / "images", {"a.png": gradient()}, "raw")
    assert first.keys() == ["a.png"]
    second = write_store(tmp_path / "images", {"b.png": gradient()}, "raw")
    assert second.keys() == ["b.png"] and "a.png" not in second
