"""FashionIQ: the official ``captions/cap.{dress,shirt,toptee}.{train,val,test}.json``,
``image_splits/split.{category}.{split}.json`` and ``images/<asin>.<ext>`` are what the dataset
reads already. This validates them (every caption's candidate and target has an image and is
in the category's split; every image decodes) and writes them to ``FashionIQ/`` (the caption
and split files with their entries as they are, extra keys included; the images the splits
name copied or packed into ``images.lmdb``).
``--skip-missing`` drops the triplets and split entries whose image is missing (counted)
instead of stopping: the public image download is known to lack some images.
"""
import os

from mmf_fashionvil.tools.prepare.output import (
    ImageSink, PrepareError, Summary, image_folders, read_json,
)

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def prepare(staged, raw_dir, store, encoding, resize, link, skip_missing=False):
    folder = image_folders("FashionIQ")["train"]  # images
    summary = Summary()
    image_dir = os.path.join(raw_dir, "images")
    if not os.path.isdir(image_dir):
        raise PrepareError(f"FashionIQ image folder '{image_dir}' does not exist")
    files = {}
    for name in sorted(os.listdir(image_dir)):
        asin, extension = os.path.splitext(name)
        if extension.lower() in IMAGE_EXTENSIONS:
            files.setdefault(asin, name)
    inputs = []
    sink = ImageSink(staged, folder, store, encoding, resize, link)
    try:
        for category in CATEGORIES:
            for split in SPLITS:
                caption_path = os.path.join(raw_dir, "captions", f"cap.{category}.{split}.json")
                split_path = os.path.join(raw_dir, "image_splits", f"split.{category}.{split}.json")
                if not os.path.isfile(caption_path) and not os.path.isfile(split_path):
                    continue  # e.g. no test files
                name = f"{category}.{split}"
                counts = summary.split(name)
                inputs += [p for p in (caption_path, split_path) if os.path.isfile(p)]
                asins = read_json(split_path)
                if not isinstance(asins, list):
                    raise PrepareError(f"{split_path}: expected a JSON list of asins")
                kept_asins = []
                for position, asin in enumerate(asins):
                    if not isinstance(asin, str) or not asin:
                        raise PrepareError(f"{split_path}: entry {position} ({asin!r}) is not "
                                           "an asin string")
                    if asin not in files:
                        if not skip_missing:
                            raise PrepareError(f"{split_path}: entry {position}: image {asin} has "
                                               f"no file in {image_dir}")
                        summary.skip(name, "split image without a file")
                        continue
                    kept_asins.append(asin)
                in_split = set(kept_asins)
                triplets = read_json(caption_path) if os.path.isfile(caption_path) else []
                kept = []
                for position, triplet in enumerate(triplets):
                    where = f"{caption_path}: entry {position}"
                    if not isinstance(triplet, dict) or "candidate" not in triplet:
                        raise PrepareError(f"{where} has no candidate")
                    roles = [r for r in ("candidate", "target") if r in triplet]
                    problem = None
                    for role in roles:
                        asin = triplet[role]
                        if asin not in files:
                            problem = f"{role} image {asin} has no file in {image_dir}"
                        elif asin not in in_split:
                            problem = f"{role} image {asin} is not in {split_path}"
                        if problem:
                            break
                    if problem:
                        if not skip_missing:
                            raise PrepareError(f"{where}: {problem}")
                        summary.skip(name, "triplet whose image is missing or outside the split")
                        continue
                    kept.append(triplet)
                for asin in kept_asins:
                    sink.add_file(files[asin], os.path.join(image_dir, files[asin]),
                                  f"{split_path}: image {asin}")
                staged.write_json(os.path.join("image_splits", f"split.{category}.{split}.json"),
                                  kept_asins)
                if os.path.isfile(caption_path):
                    staged.write_json(os.path.join("captions", f"cap.{category}.{split}.json"),
                                      kept)
                counts["products"] = counts["images"] = len(kept_asins)
                counts["captions"] = len(kept)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    if not inputs:
        raise PrepareError(f"{raw_dir}: no captions/cap.<category>.<split>.json files")
    return summary, inputs
