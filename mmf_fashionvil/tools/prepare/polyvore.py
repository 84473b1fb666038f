"""Polyvore Outfits: ``polyvore_item_metadata.json``, ``{disjoint,nondisjoint}/{train,valid,
test}.json`` (outfits ``{"set_id", "items": [{"item_id", "index"}, ...]}``) and
``images/<item_id>.jpg`` -> ``PolyvoreOutfits/``:

- ``polyvore_item_metadata.json`` (copied as it is: the OCIR reader's dense category index
  is taken over the whole file) and the outfit files (copied);
- ``train_info.json`` (pre-training): one product per item of the disjoint train outfits
  (so no disjoint test item is trained on), caption = title (else the ``url_name``) +
  description;
- ``ocir_{version}_{train,valid,test}.json``: ``{"question": [the outfit's other items],
  "blank": item}``: train: every item of every outfit; valid/test: one item per outfit,
  drawn from ``--seed`` and the set id (the same on every run);
- ``images/<item_id>.jpg`` (or ``images.lmdb``): every item an outfit names.

Outfits of fewer than two items are skipped (counted); an outfit naming an item the metadata
lacks is an error.
"""
import hashlib
import os
import shutil

from mmf_fashionvil.tools.prepare.output import (
    ImageSink, PrepareError, Summary, image_folders, read_json,
)

VERSIONS = ("disjoint", "nondisjoint")
SPLITS = ("train", "valid", "test")
METADATA = "polyvore_item_metadata.json"


def read_outfits(path, metadata):
    """[(set id, [item ids])] of an outfit file; unknown items are errors."""
    outfits = read_json(path)
    if not isinstance(outfits, list):
        raise PrepareError(f"{path}: expected a JSON list of outfits")
    parsed = []
    for position, outfit in enumerate(outfits):
        if not isinstance(outfit, dict) or not isinstance(outfit.get("items"), list):
            raise PrepareError(f"{path}: outfit {position} has no 'items' list")
        set_id = str(outfit.get("set_id", position))
        items = []
        for item in outfit["items"]:
            item_id = str(item.get("item_id", "")) if isinstance(item, dict) else ""
            if item_id not in metadata:
                raise PrepareError(f"{path}: outfit {set_id} names item {item_id!r}, which is "
                                   f"not in {METADATA}")
            items.append(item_id)
        parsed.append((set_id, items))
    return parsed


def drawn_blank(seed, version, set_id, items):
    digest = hashlib.sha256(f"{seed}/{version}/{set_id}".encode()).digest()
    return items[int.from_bytes(digest[:8], "little") % len(items)]


def item_text(entry):
    title = str(entry.get("title") or "").strip() or str(entry.get("url_name") or "").replace(
        "-", " ").strip()
    return title, str(entry.get("description") or "").strip()


def prepare(staged, raw_dir, store, encoding, resize, link, seed=0):
    folder = image_folders("PolyvoreOutfits")["train"]  # images
    summary = Summary()
    metadata_path = os.path.join(raw_dir, METADATA)
    metadata = read_json(metadata_path)
    if not isinstance(metadata, dict):
        raise PrepareError(f"{metadata_path}: expected a JSON object of item id -> metadata")
    inputs = [metadata_path]
    outfits = {}
    for version in VERSIONS:
        for split in SPLITS:
            path = os.path.join(raw_dir, version, f"{split}.json")
            inputs.append(path)
            outfits[version, split] = read_outfits(path, metadata)
    sink = ImageSink(staged, folder, store, encoding, resize, link)
    try:
        for version in VERSIONS:
            for split in SPLITS:
                name = f"{version}_{split}"
                counts, entries = summary.split(name), []
                for set_id, items in outfits[version, split]:
                    if len(items) < 2:
                        summary.skip(name, "outfit of fewer than 2 items")
                        continue
                    blanks = items if split == "train" else [drawn_blank(seed, version, set_id,
                                                                         items)]
                    for blank in blanks:
                        entries.append({"question": [i for i in items if i != blank],
                                        "blank": blank})
                    for item in items:
                        sink.add_file(f"{item}.jpg",
                                      os.path.join(raw_dir, "images", f"{item}.jpg"),
                                      f"{version}/{split}.json: outfit {set_id}: item {item}")
                    counts["products"] += 1
                    counts["captions"] += len(blanks)
                counts["images"] = len({i for e in entries for i in e["question"] + [e["blank"]]})
                staged.write_json(f"ocir_{version}_{split}.json", entries)
                shutil.copyfile(os.path.join(raw_dir, version, f"{split}.json"),
                                staged.path(version, f"{split}.json"))
        counts, products, seen = summary.split("pretraining"), [], set()
        for _, items in outfits["disjoint", "train"]:
            for item in items:
                if item in seen:
                    continue
                seen.add(item)
                title, description = item_text(metadata[item])
                if not (title or description):
                    summary.skip("pretraining", "item without title, url_name or description")
                    continue
                entry = {"id": int(item) if item.isdecimal() else item,
                         "images": [f"{item}.jpg"], "title": title, "description": description}
                if metadata[item].get("category_id") is not None:
                    entry["category_id"] = metadata[item]["category_id"]
                products.append(entry)
        counts["products"] = counts["images"] = counts["captions"] = len(products)
        staged.write_json("train_info.json", products)
        shutil.copyfile(metadata_path, staged.path(METADATA))
        sink.close()
    except BaseException:
        sink.abort()
        raise
    return summary, inputs
