"""The catalog as the official releases ship (``--format raw``), for testing
``python -m mmf_fashionvil.prepare`` end to end:

DIR/fashiongen/fashiongen_256_256_{train,validation}.h5
    ``input_image`` N x S x S x 3 uint8 (S: --image-size; the release's is 256), N x 1 byte
    strings ``input_name``, ``input_description``, ``input_category``, ``input_subcategory``,
    ``input_pose`` (``id_gridfs_<view>``) and N x 1 int32 ``input_productID``: one row per view.
DIR/fashion200k/labels/{dress,jacket,pants,skirt,top}_{train,test}_detect_all.txt,
    DIR/fashion200k/women/<category>/<sub>/<id>/<id>_<view>.jpeg
DIR/polyvore_outfits/polyvore_item_metadata.json, {disjoint,nondisjoint}/{train,valid,test}.json,
    images/<item_id>.jpg
DIR/fashioniq/captions/, image_splits/, images/
DIR/vocab/ (the catalog's vocabulary), DIR/catalog.json (manifest, ``"format": "raw"``)
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

FASHION200K_CATEGORIES = ("dress", "jacket", "pants", "skirt", "top")


def _copy_tree(source, target, names=None):
    for name in names or sorted(os.listdir(source)):
        path = os.path.join(source, name)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(target, name))
        else:
            os.makedirs(target, exist_ok=True)
            shutil.copyfile(path, os.path.join(target, name))


def _byte_column(values):
    encoded = [v.encode("utf-8") for v in values]
    width = max(1, max(len(v) for v in encoded))
    return np.array(encoded, dtype=f"S{width}").reshape(-1, 1)


def write_fashiongen(layout, out):
    import h5py

    root = layout / "datasets" / "FashionGen"
    names = json.loads((root / "categories.json").read_text(encoding="utf-8"))
    os.makedirs(out, exist_ok=True)
    for split, file_split in (("train", "train"), ("val", "validation")):
        entries = json.loads((root / f"{split}_info.json").read_text(encoding="utf-8"))
        rows = [(entry, view, name) for entry in entries
                for view, name in enumerate(entry["images"])]
        pixels = np.stack([np.asarray(Image.open(root / split / name).convert("RGB"))
                           for _, _, name in rows])
        with h5py.File(out / f"fashiongen_256_256_{file_split}.h5", "w") as f:
            f.create_dataset("input_image", data=pixels, chunks=(1,) + pixels.shape[1:])
            f.create_dataset("input_productID", data=np.array(
                [e["id"] for e, _, _ in rows], dtype=np.int32).reshape(-1, 1))
            columns = {
                "input_name": [e["title"] for e, _, _ in rows],
                "input_description": [e["description"] for e, _, _ in rows],
                "input_category": [names["category"][e["category_id"]].upper() for e, _, _ in rows],
                "input_subcategory": [names["subcategory"][e["subcategory_id"]].upper()
                                      for e, _, _ in rows],
                "input_pose": [f"id_gridfs_{view + 1}" for _, view, _ in rows],
            }
            for column, values in columns.items():
                f.create_dataset(column, data=_byte_column(values))


def write_fashion200k(layout, out):
    root = layout / "datasets" / "Fashion200k"
    os.makedirs(out / "labels", exist_ok=True)
    for split in ("train", "test"):
        lines = {category: [] for category in FASHION200K_CATEGORIES}
        for entry in json.loads((root / f"{split}_info.json").read_text(encoding="utf-8")):
            for view, path in enumerate(entry["images"]):
                target = out / path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / "images" / path, target)
                category = path.split("/")[1]  # women/<category>/...
                lines[category].append(f"{path}\t{0.9 - 0.1 * view:.3f}\t{entry['title']}\n")
        for category, category_lines in lines.items():
            with open(out / "labels" / f"{category}_{split}_detect_all.txt", "w",
                      encoding="utf-8") as f:
                f.writelines(category_lines)


def write_raw_releases(layout, out):
    """The raw releases of the layout catalog ``layout`` into ``out``."""
    layout, out = Path(layout), Path(out)
    write_fashiongen(layout, out / "fashiongen")
    write_fashion200k(layout, out / "fashion200k")
    polyvore = layout / "datasets" / "PolyvoreOutfits"
    _copy_tree(polyvore, out / "polyvore_outfits",
               ["polyvore_item_metadata.json", "disjoint", "nondisjoint", "images"])
    _copy_tree(layout / "datasets" / "FashionIQ", out / "fashioniq",
               ["captions", "image_splits", "images"])
    _copy_tree(layout / "vocab", out / "vocab")


def generate_raw(out, generate_layout):
    """Writes the layout catalog with ``generate_layout(folder)`` into a temporary folder and
    its raw releases into ``out`` (already prepared for writing); returns the layout's
    manifest."""
    from mmf_fashionvil.tools.synthetic.writers import MANIFEST

    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out))) as temporary:
        layout = generate_layout(os.path.join(temporary, "layout"))
        write_raw_releases(layout, out)
        return json.loads((Path(layout) / MANIFEST).read_text(encoding="utf-8"))
