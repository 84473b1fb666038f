"""Fashion200k text-guided image retrieval (the protocol of Vo et al., TIRG, CVPR'19) on the
pre-processed layout (SPEC §4.1: ``{train,test}_info.json``, products with several images).

Every image is described by its product's text (the title: the layout has no
description). A query pairs a source image with a target *description* that differs from
the source's in exactly one word (same length, one position changed); the modification
text is "replace <a> with <b>".

- train: one item per image whose description has such a neighbour; the target
  description and one of its images are drawn from the item's seeded RNG.
- val/test: the query rows first — one per such image, in file order, the k-th image of a
  description taking its (k mod n)-th of n neighbours (sorted), so the queries spread over
  every neighbour and never change — then every image of the split as a gallery row.
  ``match_id`` is the description id: any gallery image with the target's description is
  a correct answer (``target_id`` = the target description id). ``category`` is 0 (the
  ``fashionvil_tgir_fashion200k`` metric ranks against the whole gallery).
"""
from collections import defaultdict

import torch
from mmf.common.sample import Sample

from mmf_fashionvil.data.base import DataError, FashionDataset


def description_words(text):
    return tuple(text.lower().split())


def one_word_neighbours(descriptions):
    """For each description (tuple of words), the sorted indices of the descriptions that
    differ from it in exactly one word position. Linear in the number of words: the
    descriptions sharing (length, position, the other words) differ exactly there."""
    groups = defaultdict(list)
    for index, words in enumerate(descriptions):
        for position in range(len(words)):
            groups[(len(words), position, words[:position] + words[position + 1:])].append(index)
    neighbours = [set() for _ in descriptions]
    for members in groups.values():
        for index in members:
            neighbours[index].update(m for m in members if m != index)
    return [sorted(n) for n in neighbours]


def modification_text(source, target):
    """'replace <a> with <b>' for two descriptions differing in one word position."""
    (old, new), = [(a, b) for a, b in zip(source, target) if a != b]
    return f"replace {old} with {new}"


class Fashion200kTGIRDataset(FashionDataset):
    def __init__(self, config, dataset_type):
        super().__init__("fashion200k_tgir", config, dataset_type)
        database = self.read_products(config.annotations[dataset_type],
                                      self.image_folder(config, dataset_type))
        # Flat image list; images of one description share a description id.
        self.image_paths, self.image_description = [], []
        description_ids, self.descriptions = {}, []
        for product in database.products:
            words = description_words(product["text"])
            if words not in description_ids:
                description_ids[words] = len(self.descriptions)
                self.descriptions.append(words)
            for path in product["images"]:
                self.image_paths.append(path)
                self.image_description.append(description_ids[words])
        self.neighbours = one_word_neighbours(self.descriptions)
        self.description_images = defaultdict(list)
        for image, description in enumerate(self.image_description):
            self.description_images[description].append(image)
        # (source image, target description or None while training: drawn per item)
        self.queries, seen = [], defaultdict(int)
        for image, description in enumerate(self.image_description):
            options = self.neighbours[description]
            if options:
                target = None if self.is_train else options[seen[description] % len(options)]
                self.queries.append((image, target))
                seen[description] += 1
        if not self.queries:
            raise DataError(
                f"{database.path}: no two descriptions differ in exactly one word, so there "
                "is no Fashion200k query"
            )
        self.num_gallery = 0 if self.is_train else len(self.image_paths)

    def __len__(self):
        return len(self.queries) + self.num_gallery

    def _image(self, index):
        return self.image_processor(self.read_image(self.image_paths[index]))

    def build_sample(self, index):
        sample = Sample()
        if index < len(self.queries):
            source, target = self.queries[index]
            source_description = self.image_description[source]
            if target is None:
                options = self.neighbours[source_description]
                target = options[int(torch.randint(len(options), ()))]
                images = self.description_images[target]
                sample.target_image = self._image(images[int(torch.randint(len(images), ()))])
            text = modification_text(self.descriptions[source_description],
                                     self.descriptions[target])
            image, is_query, target_id = source, 1, target
        else:
            image = index - len(self.queries)
            # Rows of a batch need the same fields: gallery rows carry an empty text.
            text, is_query, target_id = "", 0, -1
        sample.image = self._image(image)
        sample.update(self.text_processor({"text": text}))
        sample.is_query = torch.tensor(is_query, dtype=torch.long)
        sample.image_id = torch.tensor(image, dtype=torch.long)
        sample.target_id = torch.tensor(target_id, dtype=torch.long)
        sample.match_id = torch.tensor(self.image_description[image], dtype=torch.long)
        sample.category = torch.tensor(0, dtype=torch.long)
        # rc10's Losses skip a batch that has no `targets` (unused by the TGIR loss).
        sample.targets = torch.tensor(0, dtype=torch.long)
        return sample
