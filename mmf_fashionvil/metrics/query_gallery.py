"""Query/gallery retrieval metrics, all values in percent: text-guided image retrieval
(``fashionvil_tgir``, ``fashionvil_tgir_fashion200k``) and outfit complementary item
retrieval (``fashionvil_ocir``).

Collected fields (``mo`` = model_output, ``sl`` = sample_list):

- ``fashionvil_tgir`` / ``fashionvil_tgir_fashion200k``: rows are either queries or gallery
  images (sl ``is_query``, bool). mo ``composed_embedding`` (used on query rows) and
  ``image_embedding`` (used on gallery rows); sl ``image_id`` (query row: its reference
  image; gallery row: the image), ``target_id`` (query rows; anything on gallery rows),
  ``category``, ``sample_index``, and optionally ``match_id`` (gallery rows: the id a
  query's ``target_id`` must equal to count as correct; default ``image_id``. Fashion200k
  sets it to the target-description id, since any image with the target's description is
  correct there). Gallery rows count once per (category, image); a query's reference image
  is left out of its own ranking unless it is itself a correct target; a query whose target
  is missing from its gallery is an error, not a miss.
- ``fashionvil_ocir``: the same layout with mo ``outfit_embedding`` (query rows: the outfit
  without its blank item, conditioned on the blank's category) and ``item_embedding``
  (candidate rows); sl ``is_query``, ``item_id`` (candidate rows; -1 on query rows),
  ``target_id`` (query rows: the blank item), ``category`` (query rows: the blank's
  category; candidate rows: the item's), ``sample_index``.
"""
from collections import defaultdict

import torch

from mmf.common.registry import registry
from mmf_fashionvil.metrics.ranking import (
    DatasetMetric,
    chunked_ranks,
    first_rows_of,
    recall_at_k,
    sorted_by_sample_index,
)


class _QueryGalleryMetric(DatasetMetric):
    """Rows are queries (``is_query``) or gallery entries; queries are ranked within a
    gallery chosen per query. Subclasses name the fields and pick the galleries."""

    query_key = gallery_key = id_key = None

    def _split(self, collected):
        self._require(collected, self.required_params)
        rows = sorted_by_sample_index(collected)
        is_query = rows["is_query"].bool()
        match = rows.get("match_id", rows[self.id_key])
        queries = {
            "embedding": rows[self.query_key][is_query], "own_id": rows[self.id_key][is_query],
            "target": rows["target_id"][is_query], "category": rows["category"][is_query],
        }
        gallery_rows = (~is_query).nonzero().flatten()
        # One entry per (category, image): the same gallery image emitted twice counts once.
        first, _ = first_rows_of(
            torch.stack([rows["category"][gallery_rows], rows[self.id_key][gallery_rows]], 1))
        gallery_rows = gallery_rows[first]
        gallery = {
            "embedding": rows[self.gallery_key][gallery_rows],
            "id": rows[self.id_key][gallery_rows],
            "match": match[gallery_rows],
            "category": rows["category"][gallery_rows],
        }
        if len(queries["target"]) == 0 or len(gallery["id"]) == 0:
            raise ValueError(
                f"metric {self.name}: needs query rows and gallery rows, got "
                f"{len(queries['target'])} queries and {len(gallery['id'])} gallery rows"
            )
        return queries, gallery

    def _ranks(self, queries, gallery, query_rows, gallery_rows, where):
        try:
            return chunked_ranks(
                queries["embedding"][query_rows], gallery["embedding"][gallery_rows],
                queries["target"][query_rows], gallery["match"][gallery_rows],
                queries["own_id"][query_rows], gallery["id"][gallery_rows],
            )
        except ValueError as error:
            raise ValueError(
                f"metric {self.name}, {where}: a query's target is not in its gallery ({error})"
            ) from error

    def _category_name(self, index):
        if self.categories is None:
            return str(index)
        if not 0 <= index < len(self.categories):
            raise ValueError(
                f"metric {self.name}: category index {index} has no name in categories="
                f"{list(self.categories)}"
            )
        return self.categories[index]


FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
GALLERIES = ("original", "union", "all")


@registry.register_metric("fashionvil_tgir")
class TextGuidedImageRetrieval(_QueryGalleryMetric):
    """Text-guided image retrieval. ``gallery``:

    - ``original`` (default): each query ranks the gallery images of its category (the
      official FashionIQ per-category validation galleries);
    - ``union``: each query ranks the union of the reference and target images of its
      category's queries (the "VAL" gallery of Chen et al.);
    - ``all``: every gallery image, one result over all queries (Fashion200k).

    The reference image is left out of its own ranking. Keys: ``{gallery}/{category}/r@K``,
    ``{gallery}/mean/r@K`` (unweighted mean over categories, the FashionIQ convention) and
    ``{gallery}/r_mean``; with ``all``: ``all/r@K`` and ``all/r_mean``."""

    model_output_keys = ("composed_embedding", "image_embedding")
    sample_list_keys = ("is_query", "image_id", "target_id", "category", "sample_index")
    query_key, gallery_key, id_key = "composed_embedding", "image_embedding", "image_id"

    def __init__(self, gallery="original", ks=(10, 50), categories=FASHIONIQ_CATEGORIES,
                 name="fashionvil_tgir"):
        super().__init__(name)
        if gallery not in GALLERIES:
            raise ValueError(f"metric {name}: gallery={gallery!r}, expected one of {GALLERIES}")
        self.gallery = gallery
        self.ks = tuple(int(k) for k in ks)
        self.categories = None if categories is None else list(categories)

    def collect(self, sample_list, model_output):
        collected = super().collect(sample_list, model_output)
        if "match_id" in sample_list:
            collected["match_id"] = self._field(sample_list, "match_id", "sample list").cpu()
        return collected

    def compute(self, collected):
        queries, gallery = self._split(collected)
        if self.gallery == "all":
            ranks = self._ranks(queries, gallery, slice(None), slice(None), "gallery 'all'")
            values = {f"all/r@{k}": v for k, v in recall_at_k(ranks, self.ks).items()}
            values["all/r_mean"] = sum(values.values()) / len(values)
            return values
        values, per_k = {}, defaultdict(list)
        for category in torch.unique(queries["category"]).tolist():
            name = self._category_name(category)
            query_rows = queries["category"] == category
            gallery_rows = gallery["category"] == category
            if self.gallery == "union":
                wanted = torch.cat([queries["own_id"][query_rows], queries["target"][query_rows]])
                gallery_rows &= torch.isin(gallery["id"], wanted)
            ranks = self._ranks(queries, gallery, query_rows, gallery_rows,
                                f"gallery '{self.gallery}', category {name}")
            for k, value in recall_at_k(ranks, self.ks).items():
                values[f"{self.gallery}/{name}/r@{k}"] = value
                per_k[k].append(value)
        for k in self.ks:
            values[f"{self.gallery}/mean/r@{k}"] = sum(per_k[k]) / len(per_k[k])
        values[f"{self.gallery}/r_mean"] = sum(
            values[f"{self.gallery}/mean/r@{k}"] for k in self.ks) / len(self.ks)
        return values


@registry.register_metric("fashionvil_tgir_fashion200k")
class Fashion200kTextGuidedImageRetrieval(TextGuidedImageRetrieval):
    """Fashion200k TGIR: R@1/10/50 of each query against every test image (gallery
    ``all``); with ``match_id`` = description id, any image with the target's description
    is correct (the protocol of Vo et al.)."""

    def __init__(self, ks=(1, 10, 50)):
        super().__init__(gallery="all", ks=ks, categories=None,
                         name="fashionvil_tgir_fashion200k")


@registry.register_metric("fashionvil_ocir")
class OutfitComplementaryRetrieval(_QueryGalleryMetric):
    """Outfit complementary item retrieval: each outfit query ranks the candidate items of
    its blank's category, R@K per category, in two conventions (keys named apart):

    - ``blank_items/...`` (the authors' ``r@k_ocir``, the headline): the gallery is the set
      of distinct blank items of the split's entries, and ``blank_items/mean/r@K`` is the
      unweighted mean over categories of the per-category recall. Keys
      ``blank_items/{category}/r@K``, ``blank_items/mean/r@K``, ``blank_items/r_mean``.
    - ``all_items/...`` (CSA-Net's candidate pool): the gallery is every candidate row (the
      dataset emits every item of the split's entries, question items too), and
      ``all_items/weighted/r@K`` weights each category by its number of queries (= the
      recall over all queries). Keys ``all_items/{category}/r@K``,
      ``all_items/weighted/r@K``, ``all_items/r_mean``.

    ``categories`` optionally names the category indices."""

    model_output_keys = ("outfit_embedding", "item_embedding")
    sample_list_keys = ("is_query", "item_id", "target_id", "category", "sample_index")
    query_key, gallery_key, id_key = "outfit_embedding", "item_embedding", "item_id"

    def __init__(self, ks=(10, 30, 50), categories=None):
        super().__init__("fashionvil_ocir")
        self.ks = tuple(int(k) for k in ks)
        self.categories = None if categories is None else list(categories)

    def compute(self, collected):
        queries, gallery = self._split(collected)
        is_blank = torch.isin(gallery["id"], queries["target"])
        categories = torch.unique(queries["category"]).tolist()
        num_queries = len(queries["target"])
        values = {}
        category_mean, weighted = dict.fromkeys(self.ks, 0.0), dict.fromkeys(self.ks, 0.0)
        for category in categories:
            name = self._category_name(category)
            query_rows = queries["category"] == category
            in_category = gallery["category"] == category
            for gallery_name, gallery_rows in (("blank_items", in_category & is_blank),
                                               ("all_items", in_category)):
                ranks = self._ranks(queries, gallery, query_rows, gallery_rows,
                                    f"gallery '{gallery_name}', category {name}")
                for k, value in recall_at_k(ranks, self.ks).items():
                    values[f"{gallery_name}/{name}/r@{k}"] = value
                    if gallery_name == "blank_items":
                        category_mean[k] += value / len(categories)
                    else:
                        weighted[k] += value * len(ranks) / num_queries
        for k in self.ks:
            values[f"blank_items/mean/r@{k}"] = category_mean[k]
            values[f"all_items/weighted/r@{k}"] = weighted[k]
        values["blank_items/r_mean"] = sum(category_mean.values()) / len(self.ks)
        values["all_items/r_mean"] = sum(weighted.values()) / len(self.ks)
        return values
