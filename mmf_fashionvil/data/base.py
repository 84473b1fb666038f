"""What every fashion dataset shares: locating files, reading the info JSON
files of the pre-processed layout (SPEC §4.1) with clear errors, loading
images, and per-item randomness that is reproducible for exact resume.
"""
import os

import torch
from mmf.common.registry import registry
from mmf.datasets.base_dataset import BaseDataset
from mmf.datasets.base_dataset_builder import BaseDatasetBuilder

from mmf_fashionvil.data.captions import entry_text
from mmf_fashionvil.data.reading import (  # noqa: F401  (the data package's names for them)
    DEFAULT_MAX_IMAGE_PIXELS, IMAGE_STORES, DataError, LMDBImageStore, load_image, read_json,
    store_path, to_rgb,
)
from mmf_fashionvil.data.processors import IMAGE_NORMALIZATION_KEY, image_normalization


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


def integer_field(entry, key, where, default=None):
    """``entry[key]`` as an int (``default`` when absent or null); anything else is an error
    naming ``where`` (file and entry) and the field."""
    value = entry.get(key)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # A string of digits ("3") is accepted: exports such as Polyvore's metadata write ids as
    # strings. A name ("tops"), a sign, a fraction or a boolean is not an id.
    if isinstance(value, str) and value.isdecimal():
        return int(value)
    raise DataError(f"{where} has a non-integer {key} {value!r}")


class ImageRoot:
    """The image folder a split's image paths must resolve into: annotation files are data, and
    a path in one (``/abs/path``, ``../../x``, a symlink) must not make the loader read
    whatever it points at, unless the dataset config sets ``allow_images_outside_root``."""

    def __init__(self, folder, allow_outside=False):
        self.folder = folder
        self.real_folder = os.path.realpath(folder)
        self._inside_prefix = os.path.join(self.real_folder, "")  # a trailing separator
        self.allow_outside = bool(allow_outside)
        self._real_parents = {}

    def path(self, relative, where):
        """``folder/relative``, checked (symlinks and '..' resolved) to stay inside the folder;
        ``where`` names the file and entry the path comes from."""
        path = os.path.join(self.folder, relative)
        if self.allow_outside:
            return path
        real = self._realpath(path)
        if real != self.real_folder and not real.startswith(self._inside_prefix):
            raise DataError(
                f"{where}: image path {relative!r} resolves to '{real}', outside the image "
                f"folder '{self.real_folder}' (set allow_images_outside_root: true in the "
                "dataset config to read images outside it)"
            )
        return path

    def _realpath(self, path):
        """``os.path.realpath(path)``, resolving each folder once: a realpath per image walks
        every path component (seconds for FashionGen's 260k images)."""
        parent, name = os.path.split(path)
        if name in ("", ".", "..") or not parent or parent == path:
            return os.path.realpath(path)
        real_parent = self._real_parents.get(parent)
        if real_parent is None:
            real_parent = self._real_parents[parent] = self._realpath(parent)
        real = os.path.join(real_parent, name)
        return os.path.realpath(real) if os.path.islink(real) else real


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
    ``{"id", "images": [paths relative to the split's image folder], "title",
    "description"?, "category_id"?, "subcategory_id"?, ...}``. Images are also
    flattened, because evaluation makes every (product, image) pair one item
    sharing the product's text. Keys beyond these (the authors' ``attributes_id``, ...)
    stay in the product dicts."""

    REQUIRED_KEYS = ("id", "images", "title")

    def __init__(self, root, annotation_file, allow_images_outside_root=False,
                 image_folder=None):
        """``root/annotation_file`` with image paths relative to ``image_folder`` (default:
        ``root``); a path leaving that folder is an error (see :class:`ImageRoot`)."""
        self.path = os.path.join(root, annotation_file)
        entries = read_json(self.path)
        if not isinstance(entries, list) or not entries:
            raise DataError(f"{self.path}: expected a non-empty JSON list of products")
        self.image_folder = root if image_folder is None else image_folder
        image_root = ImageRoot(self.image_folder, allow_images_outside_root)
        self.products, first_position = [], {}
        for position, entry in enumerate(entries):
            require_keys(entry, self.REQUIRED_KEYS, self.path, position)
            # Keyed as the attribute label files are (str): 7 and "7" are one product there.
            key = str(entry["id"])
            if key in first_position:
                # A repeated product would be its own wrong match in retrieval evaluation.
                raise DataError(f"{self.path}: product id {entry['id']!r} appears twice, in "
                                f"entries {first_position[key]} and {position}")
            first_position[key] = position
            where = f"{self.path}: product {entry['id']}"
            images = entry["images"]
            if not isinstance(images, list) or not images:
                raise DataError(f"{where} has no images")
            if not all(isinstance(p, str) and p for p in images):
                raise DataError(f"{where}: images must be a list of path strings, got {images!r}")
            self.products.append(dict(
                entry,
                images=[image_root.path(p, where) for p in images],
                text=product_text(entry, self.path),
                category_id=integer_field(entry, "category_id", where, default=-1),
                subcategory_id=integer_field(entry, "subcategory_id", where, default=-1),
            ))
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
        self.max_image_pixels = int(config.get("max_image_pixels") or DEFAULT_MAX_IMAGE_PIXELS)
        self.allow_images_outside_root = bool(config.get("allow_images_outside_root", False))
        self.image_store = str(config.get("image_store") or "files")
        if self.image_store not in IMAGE_STORES:
            raise DataError(f"dataset_config.{dataset_name}.image_store={self.image_store!r}: "
                            f"expected one of {IMAGE_STORES}")
        # lmdb: (folder + separator, its store) of every image folder read, longest first.
        self.stores = []
        self.seed = int(registry.get("seed", no_warning=True) or 0)
        self.epoch = 0

    @staticmethod
    def has_split(config, dataset_type):
        return bool(config.get("annotations", {}).get(dataset_type))

    def image_folder(self, config, split, folder=None):
        """The image folder of ``split`` (``config.images[split]``, relative to ``folder``,
        default: the dataset's), with its store registered when image_store is lmdb."""
        images = config.get("images") or {}
        if not images.get(split):
            raise DataError(f"{self.dataset_name}: the dataset config has no image folder for "
                            f"split '{split}' (images.{split}; the authors' layout: "
                            "images: {train: <folder>, val: ..., test: ...})")
        path = os.path.normpath(os.path.join(self.root if folder is None else folder,
                                             str(images[split])))
        prefix = os.path.join(path, "")
        if self.image_store == "lmdb" and all(p != prefix for p, _ in self.stores):
            self.stores.append((prefix, LMDBImageStore(store_path(path))))
            self.stores.sort(key=lambda pair: -len(pair[0]))
        return path

    def image_root(self, folder):
        """The path checker of image folder ``folder`` (see :class:`ImageRoot`)."""
        return ImageRoot(folder, self.allow_images_outside_root)

    def read_products(self, annotation_file, image_folder, folder=None):
        """The products of ``folder/annotation_file`` (default folder: the dataset's), whose
        image paths are relative to, and must stay inside, ``image_folder``."""
        folder = self.root if folder is None else folder
        return ProductDatabase(folder, annotation_file, self.allow_images_outside_root,
                               image_folder)

    def _store_of(self, path):
        for prefix, store in self.stores:
            if path.startswith(prefix):
                return store, path[len(prefix):]
        raise DataError(f"Image '{path}' is in none of the image stores of "
                        f"{self.dataset_name} ({[s.path for _, s in self.stores]}): with "
                        "image_store: lmdb, images must lie inside their split's image folder")

    def read_image(self, path):
        """The RGB image at ``path`` (from its folder's store with image_store: lmdb),
        within the dataset's max_image_pixels."""
        if self.image_store == "files":
            return load_image(path, self.max_image_pixels)
        store, key = self._store_of(path)
        return store.read(key, self.max_image_pixels)

    def image_exists(self, path):
        if self.image_store == "files":
            return os.path.isfile(path)
        store, key = self._store_of(path)
        return key in store

    def stored_image_names(self, folder):
        """The keys of image folder ``folder``'s store (lmdb); None with image_store: files."""
        if self.image_store == "files":
            return None
        return self._store_of(os.path.join(folder, ""))[0].keys()

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
