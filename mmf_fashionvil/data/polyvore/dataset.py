"""PolyvoreOutfits outfit complementary item retrieval (OCIR, SPEC §3, §4.1).

Files under ``<data_dir>/datasets/PolyvoreOutfits/``:
- ``polyvore_item_metadata.json``: item id -> {"category_id", "title", "description", ...};
- ``ocir_{split}_{train,test}.json`` (split = disjoint | nondisjoint): a list of
  ``{"question": [ids of the outfit's other items], "blank": the removed item id}``; other
  keys (the authors' ``"fake_data"``) are ignored;
- ``images/<item id>.jpg`` (the image folder: ``images`` of the dataset config).

Categories: Polyvore's ``category_id``s are sparse integers (3 ... 4518). The dense index of
a category is its rank among the distinct ``category_id``s of the whole metadata file, sorted
ascending (:func:`dense_category_index`), so it depends only on the metadata, never on the
split: disjoint and non-disjoint runs share it.

Items. Every row carries the same fields (rc10's collate stacks them):
- ``outfit_images`` [M, 3, H, W], ``outfit_mask`` [M] (1 = a question item),
  ``outfit_categories`` [M] (dense; 0 on padding): the outfit's question items, padded to
  ``max_items`` = M (longer outfits keep their first M question items);
- ``item_image`` [3, H, W] and ``has_item`` (bool): the blank (train) or the candidate;
- ``category``: the category the outfit is completed with (train, query rows: the blank's)
  or the candidate's own category (candidate rows);
- ``is_query``, ``item_id`` (candidate rows: the item's index in :attr:`items`, else -1),
  ``target_id`` (the blank's item index; -1 on candidate rows);
- with ``use_text``: ``outfit_input_ids`` / ``outfit_input_mask`` [M, L] and
  ``item_input_ids`` / ``item_input_mask`` [L] (title + ". " + description).

train: one row per entry. val/test (CSA-Net protocol): one query row per entry (is_query=1,
no item image) followed by one candidate row (is_query=0, no outfit) per distinct item of the
split's entries — question and blank items alike, as CSA-Net ranks every test item of the
target's category; the metric ``fashionvil_ocir`` restricts each query to the candidates of
its blank's category. The blank is itself a candidate, so every query has a positive.
The OCIR release has no validation file: val and test both read the test file (set
``annotations`` to point val elsewhere).
"""
import os

import torch
from mmf.common.sample import Sample

from mmf_fashionvil.data.base import (
    DataError, FashionDataset, integer_field, product_text, read_json, require_keys,
)

SPLITS = ("disjoint", "nondisjoint")
# Registry key under which the builder publishes the number of dense categories; the model
# checks model_config.fashionvil.heads.ocir.num_categories against it.
NUM_CATEGORIES_KEY = "polyvore_ocir_num_categories"


def dense_category_index(metadata, path):
    """{sparse category_id: dense index} over every metadata item that has a
    ``category_id`` (sorted ascending); a non-integer ``category_id`` is an error."""
    category_ids = set()
    for item_id, entry in metadata.items():
        if not isinstance(entry, dict):
            raise DataError(f"{path}: item {item_id} is not a JSON object")
        category_ids.add(integer_field(entry, "category_id", f"{path}: item {item_id}"))
    category_ids.discard(None)
    if not category_ids:
        raise DataError(f"{path}: no item has a category_id")
    return {category_id: index for index, category_id in enumerate(sorted(category_ids))}


def read_ocir_entries(path):
    """[(question item ids, blank item id)] of an OCIR file; ids as strings."""
    entries = read_json(path)
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: expected a non-empty JSON list of OCIR entries")

    def item_id(value, position, key):
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DataError(f"{path}: entry {position} has a {key} item id {value!r} "
                            "that is neither a string nor an integer")
        return str(value)

    parsed = []
    for position, entry in enumerate(entries):
        require_keys(entry, ("question", "blank"), path, position)
        question = entry["question"]
        if not isinstance(question, list) or not question:
            raise DataError(f"{path}: entry {position} has no question items")
        parsed.append(([item_id(i, position, "question") for i in question],
                       item_id(entry["blank"], position, "blank")))
    return parsed


class PolyvoreOCIRDataset(FashionDataset):
    def __init__(self, config, dataset_type):
        super().__init__("polyvore_ocir", config, dataset_type)
        split = config.split
        if split not in SPLITS:
            raise DataError(
                f"dataset_config.polyvore_ocir.split={split!r}: expected one of {SPLITS}")
        self.max_items = int(config.max_items)
        self.use_text = bool(config.get("use_text", False))
        metadata_path = os.path.join(self.root, config.metadata_file)
        metadata = read_json(metadata_path)
        if not isinstance(metadata, dict):
            raise DataError(f"{metadata_path}: expected a JSON object of item id -> metadata")
        self.category_index = dense_category_index(metadata, metadata_path)
        self.path = os.path.join(self.root, f"ocir_{split}_{config.annotations[dataset_type]}.json")
        self.images = self.image_root(self.image_folder(config, dataset_type))
        self.items, position_of = [], {}

        def item_index(item_id, position):
            """Index in self.items of an item of entry ``position``, added on first sight."""
            if item_id not in position_of:
                position_of[item_id] = len(self.items)
                self.items.append(self._item(item_id, metadata, metadata_path, position))
            return position_of[item_id]

        self.entries = [
            ([item_index(i, position) for i in question], item_index(blank, position))
            for position, (question, blank) in enumerate(read_ocir_entries(self.path))
        ]
        self.num_categories = len(self.category_index)
        # Rows: (entry index, None) per entry (train rows / eval queries), then in eval
        # (None, item index) per candidate.
        self.rows = [(e, None) for e in range(len(self.entries))]
        if not self.is_train:
            self.rows += [(None, i) for i in range(len(self.items))]

    def _item(self, item_id, metadata, metadata_path, position):
        where = f"{self.path}: entry {position} names item {item_id}"
        entry = metadata.get(item_id)
        if entry is None:
            raise DataError(f"{where}, which is not in {metadata_path}")
        if entry.get("category_id") is None:
            raise DataError(f"{where}, which has no category_id in {metadata_path}")
        image = self.images.path(f"{item_id}.jpg", where)
        if not self.image_exists(image):
            raise DataError(f"{where}, whose image '{image}' does not exist"
                            + (" in its image store" if self.image_store == "lmdb" else ""))
        item = {"id": item_id, "image": image,
                "category": self.category_index[
                    integer_field(entry, "category_id", f"{metadata_path}: item {item_id}")]}
        if self.use_text:
            item["text"] = product_text(dict(entry, id=item_id), metadata_path)
        return item

    def __len__(self):
        return len(self.rows)

    def build_sample(self, index):
        entry_index, candidate = self.rows[index]
        if entry_index is not None:
            question, blank = self.entries[entry_index]
            outfit = [self.items[i] for i in question[: self.max_items]]
            # train: the blank is the positive item; eval query rows carry no item.
            item = self.items[blank] if self.is_train else None
            category, target_id = self.items[blank]["category"], blank
        else:
            outfit, item = [], self.items[candidate]
            category, target_id = item["category"], -1
        outfit_images = [self._image(i) for i in outfit]
        item_image = self._image(item) if item is not None else None
        image_shape = (item_image if item_image is not None else outfit_images[0]).shape

        sample = Sample()
        sample.outfit_images = torch.zeros(self.max_items, *image_shape)
        sample.outfit_mask = torch.zeros(self.max_items, dtype=torch.long)
        sample.outfit_categories = torch.zeros(self.max_items, dtype=torch.long)
        for slot, (outfit_item, image) in enumerate(zip(outfit, outfit_images)):
            sample.outfit_images[slot] = image
            sample.outfit_mask[slot] = 1
            sample.outfit_categories[slot] = outfit_item["category"]
        sample.has_item = torch.tensor(item is not None)
        sample.item_image = item_image if item is not None else torch.zeros(image_shape)
        sample.category = torch.tensor(category)
        sample.target_id = torch.tensor(target_id)
        sample.is_query = torch.tensor(candidate is None and not self.is_train)
        sample.item_id = torch.tensor(-1 if candidate is None else candidate)
        # rc10's Losses skip a batch that has no `targets` (unused by the OCIR loss).
        sample.targets = torch.tensor(0, dtype=torch.long)
        if self.use_text:
            self._add_texts(sample, outfit, item)
        return sample

    def _image(self, item):
        return self.image_processor(self.read_image(item["image"]))

    def _add_texts(self, sample, outfit, item):
        """Tokenised texts of the outfit items (zeros on padding) and of the item."""
        length = self.text_processor.max_seq_length
        sample.outfit_input_ids = torch.zeros(self.max_items, length, dtype=torch.long)
        sample.outfit_input_mask = torch.zeros(self.max_items, length, dtype=torch.long)
        for slot, outfit_item in enumerate(outfit):
            text = self.text_processor({"text": outfit_item["text"]})
            sample.outfit_input_ids[slot] = text["input_ids"]
            sample.outfit_input_mask[slot] = text["input_mask"]
        sample.item_input_ids = torch.zeros(length, dtype=torch.long)
        sample.item_input_mask = torch.zeros(length, dtype=torch.long)
        if item is not None:
            text = self.text_processor({"text": item["text"]})
            sample.item_input_ids, sample.item_input_mask = text["input_ids"], text["input_mask"]
