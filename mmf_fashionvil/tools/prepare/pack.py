"""``pack``: the image folders of an existing layout -> one LMDB store each (``<folder>.lmdb``
beside the folder), every image file under the folder keyed by its relative path. The image
folders are those of the dataset configs (FashionGen ``train``, ``val``; Fashion200k,
PolyvoreOutfits, FashionIQ ``images``). The folders stay; a store that exists is complete
(written as ``<store>.partial`` and renamed)."""
import os

from mmf_fashionvil.data.reading import IMAGE_EXTENSIONS, DataError, LMDBImageWriter, store_path
from mmf_fashionvil.tools.prepare.output import DATASET_CONFIGS, PrepareError, image_folders


def image_files(folder):
    """Sorted paths, relative to ``folder``, of its image files (subfolders included)."""
    found = []
    for parent, folders, names in os.walk(folder):
        folders.sort()
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(parent, name), folder))
    return sorted(found)


def pack(out_dir, datasets, encoding, resize):
    """Writes the stores; returns {store path: number of images}."""
    root = os.path.join(os.path.abspath(out_dir), "datasets")
    written = {}
    names = datasets or [d for d in DATASET_CONFIGS if os.path.isdir(os.path.join(root, d))]
    if not names:
        raise PrepareError(f"{root} holds none of {list(DATASET_CONFIGS)}: nothing to pack")
    for name in names:
        if name not in DATASET_CONFIGS:
            raise PrepareError(f"--datasets: unknown dataset {name!r} (one of "
                               f"{list(DATASET_CONFIGS)})")
        for folder in sorted(set(image_folders(name).values())):
            path = os.path.join(root, name, folder)
            if not os.path.isdir(path):
                raise PrepareError(f"Image folder '{path}' does not exist: nothing to pack")
            writer = LMDBImageWriter(store_path(path), encoding, resize)
            try:
                for relative in image_files(path):
                    writer.add(relative, os.path.join(path, relative))
                written[writer.path] = writer.close()["count"]
            except DataError as e:
                writer.abort()
                raise PrepareError(str(e)) from None
            except BaseException:
                writer.abort()
                raise
    return written
