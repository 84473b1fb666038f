"""FashionGen items for retrieval (two-stream) and (sub)category recognition (SCR).

train: one item per product, a random view of it. val/test: one item per
(product, image) pair, so retrieval ranks every image (SPEC §3, `general`) and
SCR classifies every image together with its product's text.

The dataset config key ``label`` picks what ``targets`` holds: null (retrieval:
0), ``category`` or ``subcategory`` (SCR: the dense class index of the product's
``category_id`` / ``subcategory_id``). The classes are the ids present in the
TRAIN split, sorted, and every split uses that one map, so an index means the
same class everywhere; an evaluation product of a class train lacks cannot be
scored and is an error.

``dev_split.fraction`` > 0 holds that share of the train file's products out (seeded by
``dev_split.seed``) as the val split, which the trainer selects best.ckpt on; train keeps the
rest and test stays the official file, so the reported split is never used for selection
(SPEC §9). The class map still comes from the whole train file.
"""
import torch
from mmf.common.sample import Sample

from mmf_fashionvil.data.base import DataError, FashionDataset, dev_split_indices

LABEL_KEYS = {"category": "category_id", "subcategory": "subcategory_id"}
# ProductDatabase's value for a product without the id key.
MISSING_ID = -1


def split_products(config, dataset_type, read_split):
    """The products of a FashionGen split (a ProductDatabase), ``read_split(split)`` reading
    the annotation file of a split (``annotations[split]``, image paths relative to
    ``images[split]``): the split's own or, with ``dev_split.fraction`` > 0 (train / val),
    the train file's products outside / inside the held-out set."""
    fraction = float((config.get("dev_split") or {}).get("fraction") or 0.0)
    if not fraction or dataset_type == "test":
        return read_split(dataset_type)
    database = read_split("train")
    held_out = dev_split_indices(len(database), fraction, int(config.dev_split.get("seed", 0)),
                                 database.path)
    if dataset_type == "val":
        database.keep(held_out)
    else:
        database.keep(sorted(set(range(len(database))) - set(held_out)))
    return database


class FashionGenDataset(FashionDataset):
    def __init__(self, config, dataset_type):
        super().__init__("fashiongen", config, dataset_type)
        self.dev_fraction = float((config.get("dev_split") or {}).get("fraction") or 0.0)
        self.database = split_products(config, dataset_type, self.read_split)
        self.label = config.get("label")
        self.class_ids = None  # SCR: the raw ids, in dense-index order
        if self.label is not None:
            self.class_ids, self.labels = self._class_labels(config)

    def _class_labels(self, config):
        """(sorted class ids of the train split, dense label of each product)."""
        if self.label not in LABEL_KEYS:
            raise ValueError(
                f"dataset_config.fashiongen.label={self.label!r}: expected null, "
                f"{' or '.join(LABEL_KEYS)}"
            )
        key = LABEL_KEYS[self.label]
        whole_train_file = self.is_train and not self.dev_fraction
        train = self.database if whole_train_file else self.read_split("train")
        class_ids = sorted({self._class_id(train, product, key) for product in train.products})
        expected = config.get("num_classes")
        if expected is None or int(expected) != len(class_ids):
            raise ValueError(
                f"{train.path} has {len(class_ids)} distinct {key} values, but "
                f"dataset_config.fashiongen.num_classes={expected}, the size of the classifier:"
                f" set model_config.fashionvil.heads.scr.num_classes={len(class_ids)} (the SCR "
                "configs tie dataset_config.fashiongen.num_classes to it)"
            )
        index_of = {class_id: index for index, class_id in enumerate(class_ids)}
        labels = []
        for product in self.database.products:
            class_id = self._class_id(self.database, product, key)
            if class_id not in index_of:
                raise DataError(
                    f"{self.database.path}: product {product['id']} has {key} {class_id}, "
                    f"which no product of the train split ({train.path}) has: it has no class"
                )
            labels.append(index_of[class_id])
        return class_ids, labels

    def read_split(self, split):
        """The products of ``annotations[split]``, images in ``images[split]``."""
        return self.read_products(self.config.annotations[split],
                                  self.image_folder(self.config, split))

    @staticmethod
    def _class_id(database, product, key):
        if product[key] == MISSING_ID:
            raise DataError(f"{database.path}: product {product['id']} has no {key}")
        return product[key]

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
        sample.image = self.image_processor(self.read_image(product["images"][image_index]))
        self.add_product_fields(sample, product, product_index)
        if self.label is not None:
            sample.targets = torch.tensor(self.labels[product_index], dtype=torch.long)
        return sample
