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

from mmf_fashionvil.data.base import (
    DataError, FashionDataset, ProductDatabase, image_items, load_image, read_json,
)


class FashionPretrainingDataset(FashionDataset):
    def __init__(self, config, dataset_type):
        super().__init__("fashion_pretraining", config, dataset_type)
        self.products = []
        for source, files in config.sources.items():
            annotation = files.get(dataset_type)
            if not annotation:
                continue
            database = ProductDatabase(os.path.join(self.root, source), annotation)
            labels = self._attribute_labels(config, source, dataset_type, database)
            for product in database.products:
                product = dict(product, attributes=labels.get(str(product["id"]), []))
                self.products.append(product)
        if not self.products:
            raise DataError(f"fashion_pretraining: no source has a '{dataset_type}' split")
        self.num_attributes = self._num_attributes(config)
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
        path = self._attribute_file(config, "attributes.json")
        if path is None:
            return 0
        if not os.path.isfile(path):
            raise DataError(
                f"Attribute vocabulary '{path}' does not exist: run "
                f"`python -m mmf_fashionvil.tools.attributes --data-dir <data_dir>` first"
            )
        return len(read_json(path)["vocabulary"])

    def _attribute_labels(self, config, source, split, database):
        split_name = os.path.splitext(os.path.basename(database.path))[0].replace("_info", "")
        path = self._attribute_file(config, f"{source}_{split_name}_labels.json")
        if path is None:
            return {}
        if not os.path.isfile(path):
            raise DataError(f"Attribute labels '{path}' do not exist (re-run the attribute miner)")
        return read_json(path)

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
            sample.image = self.image_processor(load_image(images[first]))
            sample.image_view2 = self.image_processor(load_image(images[second]))
        else:
            sample.image = self.image_processor(load_image(images[image_index]))
        self.add_product_fields(sample, product, product_index)
        if self.num_attributes:
            labels = torch.zeros(self.num_attributes)
            labels[product["attributes"]] = 1.0
            sample.attribute_labels = labels
        return sample
