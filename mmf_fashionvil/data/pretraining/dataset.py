"""The pre-training union: FashionGen + Fashion200k + PolyvoreOutfits train splits
(SPEC §2, §4), one item per product with every field the six tasks read.

Fields beyond the two-stream ones (see fashiongen/dataset.py):
- ``image_view2``: another view of the product (MVC); a product with a single
  image gets a second random crop / flip of it, because the train transform is
  random (SPEC §2 MVC).
- ``attribute_labels``: multi-hot PAC labels from the attribute miner's files.
Masks for MLM and MPFC are drawn in the model (masking.py), not here.
"""
import os

import torch
from mmf.common.sample import Sample

from mmf_fashionvil.data.base import DataError, FashionDataset, image_items, read_json


class FashionPretrainingDataset(FashionDataset):
    def __init__(self, config, dataset_type):
        super().__init__("fashion_pretraining", config, dataset_type)
        self.num_attributes = self._num_attributes(config)
        self.products = []
        for source, files in config.sources.items():
            annotation = files.get(dataset_type)
            if not annotation:
                continue
            database = self.read_products(annotation, os.path.join(self.root, source))
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
        return any(files.get(dataset_type) for files in config.sources.values())

    @staticmethod
    def _attribute_file(config, name):
        directory = config.get("attributes_dir", None)
        return None if directory in (None, "", "None") else os.path.join(str(directory), name)

    def _num_attributes(self, config):
        """The size of the attribute vocabulary (0: no PAC labels)."""
        path = self._attribute_file(config, "attributes.json")
        if path is None:
            return 0
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
        return len(vocabulary)

    def _attribute_labels(self, config, source, database):
        """{product id: attribute indices} of ``database``'s label file, checked against the
        vocabulary (an index out of range would set another attribute or fail later)."""
        split_name = os.path.splitext(os.path.basename(database.path))[0].replace("_info", "")
        path = self._attribute_file(config, f"{source}_{split_name}_labels.json")
        if path is None:
            return {}
        if not os.path.isfile(path):
            raise DataError(f"Attribute labels '{path}' do not exist (re-run the attribute miner)")
        labels = read_json(path)
        if not isinstance(labels, dict):
            raise DataError(f"{path}: expected a JSON object of product id -> attribute indices")
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
                    f"[0, {self.num_attributes}), the attributes of "
                    f"{self._attribute_file(config, 'attributes.json')}"
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
