"""Fashion200k: ``labels/{dress,jacket,pants,skirt,top}_{train,test}_detect_all.txt`` and the
``women/...`` image tree -> ``Fashion200k/{train,test}_info.json`` and ``images/`` (or its store).

A label line is ``<image path relative to the release folder>\\t<detection score>\\t<description>``.
One product per image folder (``women/<category>/<sub>/<product id>/``), its id the folder's
name (an integer where it is one). The release is known to give images of one product
different descriptions: the product keeps the description most of its images carry (ties:
the first seen) and the summary counts such products. An image listed twice in a split is
kept once.
"""
import os
import posixpath
from collections import Counter, OrderedDict

from mmf_fashionvil.tools.prepare.output import ImageSink, PrepareError, Summary, image_folders

CATEGORIES = ("dress", "jacket", "pants", "skirt", "top")
SPLITS = {"train": "train", "test": "test"}  # label file split -> info file split


def label_files(raw_dir, split):
    paths = [os.path.join(raw_dir, "labels", f"{c}_{split}_detect_all.txt") for c in CATEGORIES]
    present = [p for p in paths if os.path.isfile(p)]
    if not present:
        raise PrepareError(f"No Fashion200k label file for split '{split}': expected "
                           f"{paths[0]} (and the other categories')")
    return present


def read_labels(path, raw_dir):
    """[(line number, image path, description)] of a label file."""
    lines = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                line = line.decode("latin-1")
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise PrepareError(f"{path}: line {number} has {len(fields)} tab-separated "
                                   "field(s), expected 3 (image path, detection score, "
                                   "description)")
            image, _, description = fields
            image = image.strip()
            normal = posixpath.normpath(image)
            if (not image or posixpath.isabs(image) or normal == ".."
                    or normal.startswith("../")):
                raise PrepareError(f"{path}: line {number}: image path {image!r} is outside "
                                   f"the image tree of {raw_dir}")
            lines.append((number, normal, " ".join(description.split())))
    return lines


def prepare(staged, raw_dir, store, encoding, resize, link):
    folder = image_folders("Fashion200k")["train"]  # images
    summary = Summary()
    sink = ImageSink(staged, folder, store, encoding, resize, link)
    inputs = []
    try:
        for label_split, split in SPLITS.items():
            counts = summary.split(split)
            products = OrderedDict()  # folder -> {"images": {path: (file, line, description)}}
            for path in label_files(raw_dir, label_split):
                inputs.append(path)
                for number, image, description in read_labels(path, raw_dir):
                    product = products.setdefault(posixpath.dirname(image), OrderedDict())
                    if image in product:
                        summary.skip(split, "image listed twice")
                        continue
                    product[image] = (path, number, description)
            entries, ids = [], {}
            for product_folder, images in products.items():
                descriptions = Counter(d for _, _, d in images.values() if d)
                if not descriptions:
                    summary.skip(split, "product without a description")
                    continue
                if len(descriptions) > 1:
                    summary.note(split, "products whose images carry different descriptions "
                                 "(kept the majority description)")
                # most_common keeps first-seen order among equal counts.
                description = descriptions.most_common(1)[0][0]
                name = posixpath.basename(product_folder) or product_folder
                product_id = int(name) if name.isdecimal() else product_folder
                if str(product_id) in ids:
                    raise PrepareError(
                        f"Fashion200k {split}: product folders '{ids[str(product_id)]}' and "
                        f"'{product_folder}' have one id {product_id}")
                ids[str(product_id)] = product_folder
                for image, (label_file, number, _) in images.items():
                    sink.add_file(image, os.path.join(raw_dir, image),
                                  f"{label_file}: line {number}")
                entries.append({"id": product_id, "images": list(images),
                                "title": description})
                counts["products"] += 1
                counts["captions"] += 1
                counts["images"] += len(images)
            staged.write_json(f"{split}_info.json", entries)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    return summary, inputs
