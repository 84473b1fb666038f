"""The pre-training union: FashionGen + Fashion200k + PolyvoreOutfits train splits
(SPEC §2, §4), one item per product with every field the six tasks read.

Fields beyond the two-stream ones (see fashiongen/dataset.py):
- ``image_view2``: another view of the product (MVC); a product with a single
  image gets a second random crop / flip of it, because the train transform is
  random (SPEC §2 MVC).
- ``attribute_labels``: multi-hot PAC labels, from the info files' ``attributes_id`` (the
  authors' classes) or from the attribute miner's files (``attribute_labels``).
Masks for MLM and MPFC are drawn in the model (masking.py), not here.
"""
import os

import torch
from mmf.common.sample import Sample

from mmf_fashionvil.data.base import DataError, FashionDataset, image_items, read_json
from mmf_fashionvil.distributed import is_main_process

# Registry key of (label source, class count) of the PAC labels (set by the builder), which
# the model checks model_config.fashionvil.heads.pac against.
NUM_ATTRIBUTES_KEY = "fashion_pretraining_num_attributes"
ATTRIBUTE_LABEL_SOURCES = ("auto", "info", "mined")
ATTRIBUTE_LABEL_SOURCES_SAID = {"info": "the info files' attributes_id",
                                "mined": "the attribute miner (attributes_dir)"}
# The authors' mined attribute classes, which their info files' attributes_id index.
AUTHORS_NUM_ATTRIBUTES = 2232


class FashionPretrainingDataset(FashionDataset):
    def __init__(self, config, dataset_type):
        super().__init__("fashion_pretraining", config, dataset_type)
        databases = []
        for source, files in config.sources.items():
            annotation = (files.get("annotations") or {}).get(dataset_type)
            if not annotation:
                continue
            folder = os.path.join(self.root, source)
            databases.append((source, self.read_products(
                annotation, self.image_folder(files, dataset_type, folder), folder)))
        self.attribute_labels_from = self._attribute_labels_from(config, databases)
        self.num_attributes = self._num_attributes(config)
        self.products = []
        for source, database in databases:
            labels = self._attribute_labels(config, source, database)
            for product in database.products:
                product = dict(product, attributes=labels.get(str(product["id"]), []))
                self.products.append(product)
        if not self.products:
            raise DataError(f"fashion_pretraining: no source has a '{dataset_type}' split")
        if self.is_train:
            self.items = [(p, None) for p in range(len(self.products))]
        else:
            self.items = image_items(self.products)

    @staticmethod
    def has_split(config, dataset_type):
        return any((files.get("annotations") or {}).get(dataset_type)
                   for files in config.sources.values())

    @staticmethod
    def _attribute_file(config, name):
        directory = config.get("attributes_dir", None)
        return None if directory in (None, "", "None") else os.path.join(str(directory), name)

    def _attribute_labels_from(self, config, databases):
        """Where the PAC labels come from (config ``attribute_labels``): "info" (the info
        files' ``attributes_id``, the authors' mined classes), "mined" (the attribute miner's
        files in ``attributes_dir``) or None (no PAC labels). ``auto``: the miner's when it
        was run (``attributes_dir`` holds attributes.json), else the info files' when every
        product of every source carries ``attributes_id`` (the authors' files), else the
        miner's where ``attributes_dir`` is set (which then asks to run it). Logged, with
        the class count; the builder registers both for the model (``NUM_ATTRIBUTES_KEY``)."""
        choice = str(config.get("attribute_labels", "auto"))
        if choice not in ATTRIBUTE_LABEL_SOURCES:
            raise DataError(f"fashion_pretraining.attribute_labels={choice}: expected one of "
                            f"{ATTRIBUTE_LABEL_SOURCES}")
        carried = bool(databases) and all("attributes_id" in product for _, database in databases
                                          for product in database.products)
        if choice == "info" and not carried:
            missing = next(f"{database.path}: product {product['id']}"
                           for _, database in databases for product in database.products
                           if "attributes_id" not in product)
            raise DataError(f"fashion_pretraining.attribute_labels=info but {missing} has no "
                            "attributes_id (use attribute_labels: mined and the attribute miner)")
        vocabulary = self._attribute_file(config, "attributes.json")
        mined = vocabulary is not None and os.path.isfile(vocabulary)
        if choice == "info" or (choice == "auto" and carried and not mined):
            return "info"
        return "mined" if vocabulary is not None else None

    def _num_attributes(self, config):
        """The number of PAC classes (0: no PAC labels): ``info_num_attributes`` for the info
        files' ids, else the size of the attribute miner's vocabulary."""
        if self.attribute_labels_from == "info":
            count = int(config.get("info_num_attributes", AUTHORS_NUM_ATTRIBUTES))
            self._log_attribute_labels(count)
            return count
        if self.attribute_labels_from is None:
            return 0
        path = self._attribute_file(config, "attributes.json")
        if not os.path.isfile(path):
            raise DataError(
                f"Attribute vocabulary '{path}' does not exist: run "
                f"`python -m mmf_fashionvil.tools.attributes --data-dir <data_dir>` first"
            )
        summary = read_json(path)
        vocabulary = summary.get("vocabulary") if isinstance(summary, dict) else None
        if not isinstance(vocabulary, list) or not vocabulary:
            raise DataError(f'{path}: expected {{"vocabulary": [attribute words], ...}} (the '
                            f"attribute miner's output), got a {type(summary).__name__} "
                            "without a non-empty vocabulary list")
        for position, word in enumerate(vocabulary):
            if not isinstance(word, str):
                raise DataError(f"{path}: vocabulary entry {position} ({word!r}) is not a string")
        self._log_attribute_labels(len(vocabulary))
        return len(vocabulary)

    def _log_attribute_labels(self, count):
        if is_main_process():
            print(f"[fashion_pretraining] {self.dataset_type}: PAC labels from "
                  f"{ATTRIBUTE_LABEL_SOURCES_SAID[self.attribute_labels_from]}, {count} classes",
                  flush=True)

    def _attribute_labels(self, config, source, database):
        """{product id: attribute indices} of ``database``: its products' ``attributes_id``
        (info labels) or its label file from the miner, checked against the class count (an
        index out of range would set another attribute or fail later)."""
        if self.attribute_labels_from == "info":
            path = database.path
            labels = {str(p["id"]): p["attributes_id"] for p in database.products}
            what = f"the {self.num_attributes} classes of info_num_attributes"
        elif self.attribute_labels_from == "mined":
            split_name = os.path.splitext(os.path.basename(database.path))[0].replace("_info", "")
            path = self._attribute_file(config, f"{source}_{split_name}_labels.json")
            if not os.path.isfile(path):
                raise DataError(
                    f"Attribute labels '{path}' do not exist (re-run the attribute miner)")
            labels = read_json(path)
            if not isinstance(labels, dict):
                raise DataError(
                    f"{path}: expected a JSON object of product id -> attribute indices")
            what = f"the attributes of {self._attribute_file(config, 'attributes.json')}"
        else:
            return {}
        for product_id, indices in labels.items():
            if (not isinstance(indices, list)
                    or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices)):
                raise DataError(f"{path}: product {product_id}: attribute labels {indices!r} are "
                                "not a list of integers")
            # -1 would silently index the last attribute.
            outside = [i for i in indices if not 0 <= i < self.num_attributes]
            if outside:
                raise DataError(
                    f"{path}: product {product_id}: attribute label(s) {outside} outside "
                    f"[0, {self.num_attributes}), {what}"
                )
        return labels

    def __len__(self):
        return len(self.items)

    def build_sample(self, index):
        product_index, image_index = self.items[index]
        product = self.products[product_index]
        images = product["images"]
        sample = Sample()
        if image_index is None:  # train: two different views where the product has them
            order = torch.randperm(len(images)).tolist()
            first, second = order[0], order[1 % len(order)]
            sample.image = self.image_processor(self.read_image(images[first]))
            sample.image_view2 = self.image_processor(self.read_image(images[second]))
        else:
            sample.image = self.image_processor(self.read_image(images[image_index]))
        self.add_product_fields(sample, product, product_index)
        if self.num_attributes:
            labels = torch.zeros(self.num_attributes)
            labels[product["attributes"]] = 1.0
            sample.attribute_labels = labels
        return sample
