"""FashionGen items for the two-stream (ITC / retrieval) path.

train: one item per product, a random view of it. val/test: one item per
(product, image) pair, so retrieval ranks every image (SPEC §3, `general`).
"""
import torch
from mmf.common.sample import Sample

from mmf_fashionvil.data.base import FashionDataset, ProductDatabase, load_image


class FashionGenDataset(FashionDataset):
    def __init__(self, config, dataset_type):
        super().__init__("fashiongen", config, dataset_type)
        self.database = ProductDatabase(self.root, config.annotations[dataset_type])

    def __len__(self):
        return len(self.database) if self.is_train else len(self.database.image_items)

    def build_sample(self, index):
        if self.is_train:
            product_index = index
            product = self.database.products[index]
            image_index = int(torch.randint(len(product["images"]), ()))
        else:
            product_index, image_index = self.database.image_items[index]
            product = self.database.products[product_index]
        sample = Sample()
        sample.image = self.image_processor(load_image(product["images"][image_index]))
        self.add_product_fields(sample, product, product_index)
        return sample
