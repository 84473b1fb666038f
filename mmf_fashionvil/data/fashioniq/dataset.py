"""FashionIQ text-guided image retrieval (SPEC §3, §4.1) from the official files only:

- ``captions/cap.{category}.{split}.json``: a list of ``{"candidate": asin, "target": asin,
  "captions": [two relative captions]}`` (extra keys such as the authors' ``target_id``,
  ``fake_data``, ``garment_class`` are ignored); the captions are joined with ", ";
- ``image_splits/split.{category}.{split}.json``: the asins of the category's split (the
  original per-category gallery);
- ``images/<asin>.<ext>``: the extension is whatever the folder (or its store) holds; the
  folder is ``images`` of the dataset config.

train: one item per triplet: the reference ``image``, the modification text and the
``target_image``. val/test: the query rows (reference image + text, ``is_query`` 1) of every
category, then the gallery rows (every image of the category's split, ``is_query`` 0). Every
asin of the split gets one integer id (its index in the sorted asins), so ``image_id`` and
``target_id`` are comparable; ``category`` is the index in ``FASHIONIQ_CATEGORIES`` (the
names the ``fashionvil_tgir`` metric reports), whatever subset is configured.
"""
import os

import torch
from mmf.common.sample import Sample

from mmf_fashionvil.data.base import DataError, FashionDataset, read_json, require_keys
from mmf_fashionvil.data.reading import IMAGE_EXTENSIONS
from mmf_fashionvil.metrics.query_gallery import FASHIONIQ_CATEGORIES

TRIPLET_KEYS = ("candidate", "target", "captions")


def image_files(folder, names=None):
    """{asin: path} of the image files in ``folder`` (one listing instead of a probe per
    asin and extension), or of ``names`` (the keys of its image store) in it."""
    if names is None:
        if not os.path.isdir(folder):
            raise DataError(f"FashionIQ image folder '{folder}' does not exist")
        names = os.listdir(folder)
    files = {}
    for name in sorted(names):
        asin, extension = os.path.splitext(name)
        if extension.lower() in IMAGE_EXTENSIONS:
            files.setdefault(asin, os.path.join(folder, name))
    return files


def read_triplets(path):
    """[(candidate asin, target asin, modification text)] of a caption file."""
    entries = read_json(path)
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: expected a non-empty JSON list of triplets")
    triplets = []
    for position, entry in enumerate(entries):
        require_keys(entry, TRIPLET_KEYS, path, position)
        candidate, target, captions = (entry[key] for key in TRIPLET_KEYS)
        if not (isinstance(candidate, str) and candidate and isinstance(target, str) and target):
            raise DataError(f"{path}: entry {position}: candidate and target must be asin strings")
        if (not isinstance(captions, list) or not captions
                or not all(isinstance(c, str) for c in captions)):
            raise DataError(f"{path}: entry {position}: captions must be a list of strings")
        text = ", ".join(caption.strip() for caption in captions)
        if not text.strip(", "):
            raise DataError(f"{path}: entry {position} has only empty captions")
        triplets.append((candidate, target, text))
    return triplets


def read_image_split(path):
    """The asins of an image split file, in order, without repeats."""
    asins = read_json(path)
    if not isinstance(asins, list) or not asins:
        raise DataError(f"{path}: expected a non-empty JSON list of asins")
    for position, asin in enumerate(asins):
        if not isinstance(asin, str) or not asin:
            raise DataError(f"{path}: entry {position} ({asin!r}) is not an asin string")
    return list(dict.fromkeys(asins))


class FashionIQDataset(FashionDataset):
    def __init__(self, config, dataset_type):
        super().__init__("fashioniq", config, dataset_type)
        split = config.annotations[dataset_type]
        folder = self.image_folder(config, dataset_type)
        self.images = self.image_root(folder)
        self.image_paths = image_files(folder, self.stored_image_names(folder))
        queries, galleries = [], []  # (category index, candidate, target, text) / (index, asin)
        for name in config.categories:
            if name not in FASHIONIQ_CATEGORIES:
                raise DataError(
                    f"dataset_config.fashioniq.categories: unknown category '{name}' (FashionIQ "
                    f"has {list(FASHIONIQ_CATEGORIES)})"
                )
            category = FASHIONIQ_CATEGORIES.index(name)
            caption_file = os.path.join(self.root, "captions", f"cap.{name}.{split}.json")
            triplets = read_triplets(caption_file)
            for position, (candidate, target, _) in enumerate(triplets):
                self._require_images(caption_file, position, (candidate, target))
            queries += [(category, *triplet) for triplet in triplets]
            if self.is_train:
                continue
            split_file = os.path.join(self.root, "image_splits", f"split.{name}.{split}.json")
            gallery = read_image_split(split_file)
            for position, asin in enumerate(gallery):
                self._require_images(split_file, position, (asin,))
            in_gallery = set(gallery)
            for position, (_, target, _) in enumerate(triplets):
                if target not in in_gallery:
                    raise DataError(
                        f"{caption_file}: entry {position}: target {target} is not in the "
                        f"{name} gallery {split_file}"
                    )
            galleries += [(category, asin) for asin in gallery]
        asins = sorted({a for q in queries for a in q[1:3]} | {a for _, a in galleries})
        self.image_ids = {asin: index for index, asin in enumerate(asins)}
        self.queries, self.gallery = queries, galleries

    def _require_images(self, path, position, asins):
        """The asins of entry ``position`` of ``path`` have image files inside the dataset
        folder."""
        for asin in asins:
            if asin not in self.image_paths:
                raise DataError(
                    f"{path}: entry {position}: image {asin} has no file "
                    f"{asin}{{{','.join(IMAGE_EXTENSIONS)}}} in the image folder"
                )
            self.images.path(self.image_paths[asin], f"{path}: entry {position}: image {asin}")

    def __len__(self):
        return len(self.queries) + len(self.gallery)

    def _image(self, asin):
        return self.image_processor(self.read_image(self.image_paths[asin]))

    def build_sample(self, index):
        sample = Sample()
        if index < len(self.queries):
            category, candidate, target, text = self.queries[index]
            sample.image = self._image(candidate)
            if self.is_train:
                sample.target_image = self._image(target)
            sample.update(self.text_processor({"text": text}))
            image_id, target_id, is_query = self.image_ids[candidate], self.image_ids[target], 1
        else:
            category, asin = self.gallery[index - len(self.queries)]
            sample.image = self._image(asin)
            # Rows of a batch need the same fields: gallery rows carry an empty text.
            sample.update(self.text_processor({"text": ""}))
            image_id, target_id, is_query = self.image_ids[asin], -1, 0
        sample.is_query = torch.tensor(is_query, dtype=torch.long)
        sample.image_id = torch.tensor(image_id, dtype=torch.long)
        sample.target_id = torch.tensor(target_id, dtype=torch.long)
        sample.category = torch.tensor(category, dtype=torch.long)
        # rc10's Losses skip a batch that has no `targets` (unused by the TGIR loss).
        sample.targets = torch.tensor(0, dtype=torch.long)
        return sample
