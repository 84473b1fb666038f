"""What the search index and the visual reports show of a catalog: a FashionGen split read
through the dataset's own code (annotation files, dev split, image-root check), and the
synthetic catalog's category names."""
import os

from omegaconf import OmegaConf

from mmf_fashionvil.data.base import DataError, ProductDatabase, read_json
from mmf_fashionvil.data.fashiongen.builder import FashionGenBuilder
from mmf_fashionvil.data.fashiongen.dataset import split_products


def fashiongen_split(data_dir, split="val", config=None):
    """(dataset folder, ProductDatabase) of the FashionGen ``split`` under ``data_dir`` as a
    run with ``config`` read it (a checkpoint's saved config: its annotation files, dev split
    and image-root switch; None: the dataset's defaults). DataError names what is missing."""
    dataset = OmegaConf.load(FashionGenBuilder.config_path()).dataset_config.fashiongen
    saved = OmegaConf.select(config, "dataset_config.fashiongen") if config is not None else None
    if saved is not None:  # read as saved: interpolations of the run need not resolve here
        dataset = OmegaConf.merge(dataset, OmegaConf.to_container(saved, resolve=False))
    root = os.path.join(str(data_dir), str(dataset.dataset_root))
    if not os.path.isdir(root):
        raise DataError(f"{root} does not exist: the data dir must hold {dataset.dataset_root}/"
                        " (the env.data_dir of the run)")
    if split not in dataset.annotations:
        raise DataError(f"--split {split}: the run's FashionGen splits are "
                        f"{sorted(dataset.annotations)}")
    allow_outside = bool(dataset.get("allow_images_outside_root", False))

    def read_split(name):
        return ProductDatabase(root, str(dataset.annotations[name]), allow_outside,
                               os.path.join(root, str(dataset.images[name])))

    return root, split_products(dataset, split, read_split)


def category_names(root, kind="category"):
    """{id: name} of ``kind`` (category | subcategory) from the ``categories.json`` beside
    the annotation files (the synthetic catalog writes {"category": [names in id order],
    "subcategory": [...]}); {} without the file."""
    path = os.path.join(root, "categories.json")
    if not os.path.isfile(path):
        return {}
    names = read_json(path)
    names = names.get(kind, []) if isinstance(names, dict) else None
    if isinstance(names, dict):
        return {int(key): str(value) for key, value in names.items()}
    if not isinstance(names, list):
        raise DataError(f"{path}: expected a JSON object with a '{kind}' list of names")
    return dict(enumerate(str(name) for name in names))
