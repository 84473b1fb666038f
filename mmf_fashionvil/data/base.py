"""What every fashion dataset shares: locating files, reading the info JSON
files of the pre-processed layout (SPEC §4.1) with clear errors, loading
images, and per-item randomness that is reproducible for exact resume.
"""
import json
import os

import torch
from mmf.common.registry import registry
from mmf.datasets.base_dataset import BaseDataset
from mmf.datasets.base_dataset_builder import BaseDatasetBuilder
from PIL import Image, UnidentifiedImageError

from mmf_fashionvil.data.captions import entry_text
from mmf_fashionvil.data.processors import IMAGE_NORMALIZATION_KEY, image_normalization


class DataError(ValueError):
    """Malformed or missing dataset input; the message names the file and entry."""


def dataset_root(config):
    """``<env.data_dir>/<dataset_root>``, checked to exist."""
    data_dir = config.get("data_dir", None)
    if data_dir in (None, "", "None"):
        raise DataError(
            "env.data_dir is not set. Pass env.data_dir=<dir holding datasets/> "
            "(`python -m mmf_fashionvil.synthetic --out DIR` writes a synthetic catalog)"
        )
    root = os.path.join(os.path.expanduser(str(data_dir)), config.dataset_root)
    if not os.path.isdir(root):
        raise DataError(
            f"Dataset folder '{root}' does not exist (env.data_dir={data_dir}, "
            f"dataset_root={config.dataset_root})"
        )
    return root


def read_json(path):
    if not os.path.isfile(path):
        raise DataError(f"Annotation file '{path}' does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"Annotation file '{path}' is not valid JSON: {e}") from None


def require_keys(entry, keys, path, position):
    if not isinstance(entry, dict):
        raise DataError(f"{path}: entry {position} is not a JSON object")
    missing = [k for k in keys if k not in entry]
    if missing:
        name = entry.get("id", position)
        raise DataError(f"{path}: entry {name} lacks key(s) {missing}")


def product_text(entry, path):
    """The caption rule shared with the attribute miner; an empty caption is an error."""
    text = entry_text(entry)
    if not text:
        raise DataError(f"{path}: entry {entry.get('id')} has an empty caption")
    return text


def load_image(path):
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"Image file '{path}' does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"Image file '{path}' cannot be read (corrupt?): {e}") from None


def dev_split_indices(num_products, fraction, seed, path):
    """Sorted indices of the ``round(fraction * num_products)`` products of the train file
    ``path`` held out as a dev split (SPEC §9: select models on data the reported split never
    saw), drawn with ``seed``; the same products for every run with that seed."""
    if not 0 < fraction < 1:
        raise ValueError(f"dev_split.fraction must be in [0, 1) (0: no dev split), got {fraction}")
    count = round(fraction * num_products)
    if not 0 < count < num_products:
        raise DataError(f"{path}: dev_split.fraction={fraction} of its {num_products} products "
                        "leaves the dev or the train split empty")
    order = torch.randperm(num_products, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:count].tolist())


def image_items(products):
    """(product index, image index) for every image, in order: the evaluation items."""
    return [(p, i) for p, product in enumerate(products) for i in range(len(product["images"]))]


class ProductDatabase:
    """Products of an info JSON (FashionGen, Fashion200k, Polyvore pre-training):
    ``{"id", "images": [paths relative to the dataset root], "title",
    "description"?, "category_id"?, "subcategory_id"?}``. Images are also
    flattened, because evaluation makes every (product, image) pair one item
    sharing the product's text."""

    REQUIRED_KEYS = ("id", "images", "title")

    def __init__(self, root, annotation_file):
        self.path = os.path.join(root, annotation_file)
        entries = read_json(self.path)
        if not isinstance(entries, list) or not entries:
            raise DataError(f"{self.path}: expected a non-empty JSON list of products")
        self.products = []
        for position, entry in enumerate(entries):
            require_keys(entry, self.REQUIRED_KEYS, self.path, position)
            images = entry["images"]
            if not isinstance(images, list) or not images:
                raise DataError(f"{self.path}: product {entry['id']} has no images")
            self.products.append(
                {
                    "id": entry["id"],
                    "images": [os.path.join(root, p) for p in images],
                    "text": product_text(entry, self.path),
                    "category_id": int(entry.get("category_id", -1)),
                    "subcategory_id": int(entry.get("subcategory_id", -1)),
                }
            )
        self.image_items = image_items(self.products)

    def keep(self, indices):
        """Keeps the products at ``indices`` (in that order), e.g. one side of a dev split."""
        self.products = [self.products[i] for i in indices]
        self.image_items = image_items(self.products)

    def __len__(self):
        return len(self.products)


class FashionDataset(BaseDataset):
    """Base of our datasets.

    Per-item randomness (view choice, crops, flips, masking) is drawn from
    torch's RNG re-seeded from (seed, epoch, index), so an item's content does
    not depend on worker count or on where a run was resumed.
    """

    def __init__(self, dataset_name, config, dataset_type):
        super().__init__(dataset_name, config, dataset_type)
        self.root = dataset_root(config)
        self.seed = int(registry.get("seed", no_warning=True) or 0)
        self.epoch = 0

    @staticmethod
    def has_split(config, dataset_type):
        return bool(config.get("annotations", {}).get(dataset_type))

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def item_seed(self, index):
        return (self.seed * 1_000_003 + self.epoch * 7_919 + index * 104_729) % (2**63)

    def __getitem__(self, index):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.item_seed(index))
            sample = self.build_sample(index)
        sample.sample_index = torch.tensor(index, dtype=torch.long)
        return sample

    def build_sample(self, index):
        raise NotImplementedError

    def add_product_fields(self, sample, product, product_index):
        """Tokenised text and the product's identity / category fields."""
        sample.update(self.text_processor({"text": product["text"]}))
        sample.text = product["text"]
        sample.id = torch.tensor(product_index, dtype=torch.long)
        sample.category = torch.tensor(product["category_id"], dtype=torch.long)
        sample.subcategory = torch.tensor(product["subcategory_id"], dtype=torch.long)
        sample.targets = torch.tensor(0, dtype=torch.long)

    @property
    def is_train(self):
        return self.dataset_type == "train"

    def image_processor(self, image):
        processor = self.train_image_processor if self.is_train else self.eval_image_processor
        return processor(image)


class FashionBuilder(BaseDatasetBuilder):
    """Builder for the pre-processed layout: nothing to build (no downloads
    here), load = construct the dataset class for the split."""

    dataset_class = None
    config_file = None

    def build(self, config, dataset_type="train", *args, **kwargs):
        pass

    def load(self, config, dataset_type="train", *args, **kwargs):
        if not self.dataset_class.has_split(config, dataset_type):
            return None
        return self.dataset_class(config, dataset_type)

    def update_registry_for_model(self, config):
        """Tells the model how this dataset normalises its images (MPFC undoes it)."""
        processor = config.get("processors", {}).get("train_image_processor", {})
        registry.register(IMAGE_NORMALIZATION_KEY, image_normalization(processor.get("params")))

    @classmethod
    def config_path(cls):
        return os.path.join(os.path.dirname(__file__), "..", "configs", "datasets", cls.config_file)
