"""What every sub-command shares: the staged output folder (written beside the target, renamed
into place at the end), its manifest, the image sink (files or an LMDB store) and the summary."""
import json
import os
import shutil
from collections import Counter

from omegaconf import OmegaConf

from mmf_fashionvil import CONFIGS_DIR
from mmf_fashionvil.data.reading import (
    DataError, LMDBImageWriter, load_image, remove_tree, store_path,
)
from mmf_fashionvil.data.reading import read_json as read_annotation

TOOL = "mmf_fashionvil.prepare"
TOOL_VERSION = 1
MANIFEST = "prepared.json"
CONFIGS = os.path.join(CONFIGS_DIR, "datasets")
# The dataset folder of each release and the dataset config naming its image folders.
DATASET_CONFIGS = {"FashionGen": "fashiongen.yaml", "Fashion200k": "fashion200k_tgir.yaml",
                   "PolyvoreOutfits": "polyvore_ocir.yaml", "FashionIQ": "fashioniq.yaml"}


class PrepareError(Exception):
    """Bad input or a refused output; the message names the file, the entry and the problem."""


def image_folders(dataset):
    """{split: image folder} of ``dataset`` (FashionGen, ...) from its dataset config, so that
    the prepared layout is the one the datasets read."""
    config = OmegaConf.load(os.path.join(CONFIGS, DATASET_CONFIGS[dataset])).dataset_config
    (entry,) = config.values()
    return {split: str(folder) for split, folder in entry.images.items()}


def read_json(path):
    """A JSON file of a release (PrepareError naming it when missing or invalid)."""
    try:
        return read_annotation(path)
    except DataError as e:
        raise PrepareError(str(e)) from None


def input_signature(paths, raw_dir):
    """{path relative to raw_dir: [size, mtime_ns]}: what the manifest compares on a rerun."""
    signature = {}
    for path in sorted(paths):
        status = os.stat(path)
        signature[os.path.relpath(path, raw_dir)] = [status.st_size, status.st_mtime_ns]
    return signature


def inputs_unchanged(recorded, raw_dir):
    """Whether the raw files a manifest records still have their recorded sizes and times."""
    if not isinstance(recorded, dict) or not recorded:
        return False
    paths = [os.path.join(raw_dir, relative) for relative in recorded]
    return all(os.path.isfile(p) for p in paths) and input_signature(paths, raw_dir) == recorded


class StagedDataset:
    """``<out>/datasets/<name>`` written as ``<out>/datasets/.<name>.partial`` and renamed into
    place by :meth:`commit`: an interrupted run leaves only the partial folder, which the next
    run removes. ``key`` (the command, raw inputs and options) is recorded in the manifest:
    a rerun with the same key finds the dataset up to date; another key, or a folder not
    written by this tool, is refused unless ``overwrite``."""

    def __init__(self, out_dir, name, key, overwrite=False):
        self.datasets = os.path.join(os.path.abspath(out_dir), "datasets")
        self.target = os.path.join(self.datasets, name)
        self.partial = os.path.join(self.datasets, f".{name}.partial")
        self.old = os.path.join(self.datasets, f".{name}.old")
        self.name, self.key = name, key
        for leftover in (self.partial, self.old):
            remove_tree(leftover)  # of an interrupted run
        self.up_to_date = False
        manifest = os.path.join(self.target, MANIFEST)
        if os.path.lexists(self.target):
            previous = None
            if os.path.isfile(manifest):
                with open(manifest, encoding="utf-8") as f:
                    try:
                        previous = json.load(f)
                    except json.JSONDecodeError:
                        previous = None
            same = (isinstance(previous, dict) and previous.get("key") == key
                    and inputs_unchanged(previous.get("inputs"), key.get("raw")))
            if same and not overwrite:
                self.up_to_date = True
                return
            if not overwrite:
                why = ("holds a dataset prepared from other inputs or options" if previous
                       else f"holds a dataset not written by {TOOL} (no {MANIFEST})")
                raise PrepareError(f"'{self.target}' {why}: refusing to replace it; pass "
                                   "--overwrite to replace it, or choose another --out")
        os.makedirs(self.partial)

    def path(self, *parts):
        path = os.path.join(self.partial, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def write_json(self, relative, data, indent=None):
        with open(self.path(relative), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=indent, ensure_ascii=False, sort_keys=indent is not None)
            f.write("\n")

    def commit(self, counts, inputs):
        """Writes the manifest (``inputs``: the raw files read) and renames the folder into
        place."""
        self.write_json(MANIFEST, {"tool": TOOL, "version": TOOL_VERSION, "key": self.key,
                                   "inputs": input_signature(inputs, self.key["raw"]),
                                   "counts": counts}, indent=1)
        if os.path.lexists(self.target):
            os.rename(self.target, self.old)
        os.rename(self.partial, self.target)
        remove_tree(self.old)

    def abort(self):
        remove_tree(self.partial)


class ImageSink:
    """The images of one image folder of a staged dataset: files (copied or, for pixel
    arrays, PNG) or one LMDB store ``<folder>.lmdb``. Every image is checked to decode."""

    def __init__(self, staged, folder, store="files", encoding="keep", resize=None, link=False):
        self.store, self.link = store, link
        self.folder = os.path.join(staged.partial, folder)
        self.writer = None
        if store == "lmdb":
            os.makedirs(os.path.dirname(self.folder) or ".", exist_ok=True)
            self.writer = LMDBImageWriter(store_path(self.folder), encoding, resize)
        self.count, self.added = 0, set()

    def add_file(self, relative, source, where):
        """Copies (or stores) the image file ``source`` as ``relative`` (once: a second
        call for one path does nothing)."""
        if relative in self.added:
            return
        self.added.add(relative)
        if not os.path.isfile(source):
            raise PrepareError(f"{where}: image '{source}' does not exist")
        try:
            if self.writer is not None:
                self.writer.add(relative, source, f"Image file '{source}'")
            else:
                load_image(source)  # decodes?
                target = os.path.join(self.folder, relative)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                copied = False
                if self.link:
                    try:
                        os.link(source, target)
                        copied = True
                    except OSError:
                        pass
                if not copied:
                    shutil.copyfile(source, target)
        except DataError as e:
            raise PrepareError(f"{where}: {e}") from None
        self.count += 1

    def add_pixels(self, relative, pixels, where):
        """Stores an H x W x 3 uint8 array as ``relative`` (files: a PNG)."""
        if pixels.ndim != 3 or pixels.shape[2] != 3 or str(pixels.dtype) != "uint8":
            raise PrepareError(f"{where}: image of shape {pixels.shape} and type {pixels.dtype}, "
                               "expected H x W x 3 uint8")
        if self.writer is not None:
            self.writer.add(relative, pixels)
        else:
            from PIL import Image

            target = os.path.join(self.folder, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            Image.fromarray(pixels, "RGB").save(target, format="PNG", compress_level=6)
        self.count += 1

    def close(self):
        if self.writer is not None:
            self.writer.close()

    def abort(self):
        if self.writer is not None:
            self.writer.abort()


def check_store_options(store, encoding, resize):
    if store == "files" and (encoding != "keep" or resize):
        raise PrepareError("--encoding and --resize apply to --store lmdb (files are copied "
                           "as they are)")
    if resize is not None and resize < 1:
        raise PrepareError(f"--resize must be a positive number of pixels, got {resize}")


class Summary:
    """Per-split counts: products, images, captions and skipped entries by reason."""

    def __init__(self):
        self.splits = {}

    def split(self, name):
        return self.splits.setdefault(name, {"products": 0, "images": 0, "captions": 0,
                                             "skipped": Counter(), "notes": Counter()})

    def skip(self, split, reason, count=1):
        self.split(split)["skipped"][reason] += count

    def note(self, split, what, count=1):
        """Something kept but worth reporting (e.g. a repaired product), with a count."""
        self.split(split)["notes"][what] += count

    def as_dict(self):
        return {name: dict(counts, skipped=dict(sorted(counts["skipped"].items())),
                           notes=dict(sorted(counts["notes"].items())))
                for name, counts in self.splits.items()}

    def print(self, dataset, target):
        print(f"{dataset} -> {target}")
        for name, counts in self.splits.items():
            skipped = "; ".join(f"{reason}: {n}" for reason, n in sorted(counts["skipped"].items()))
            print(f"  {name}: {counts['products']} products, {counts['images']} images, "
                  f"{counts['captions']} captions, skipped {sum(counts['skipped'].values())}"
                  + (f" ({skipped})" if skipped else ""))
            for what, n in sorted(counts["notes"].items()):
                print(f"    {what}: {n}")
