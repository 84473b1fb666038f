"""The FashionGen split as the evaluation sees it, the evaluation's ranking, and what the
retrieval grids show.

Items (``general`` protocol, mmf_fashionvil/metrics/retrieval.py): one image item per
(product, image) pair in file order, one text per product. Image->text ranks every product's
text for an image; text->image ranks every image for a product's text, any image of the
product being correct. Ties count against the query (mmf_fashionvil/metrics/ranking.py): a
query's rank is the number of wrong candidates scoring >= its best correct one, so the grids
list candidates best first with wrong ones before correct ones among equal scores.
"""
import os
import random
from dataclasses import dataclass, field

import torch

from mmf_fashionvil.tools.visualize import VisualizeError

# ------------------------------------------------------------------------------ the split
@dataclass
class Split:
    """A FashionGen split: ``products`` (ProductDatabase dicts: id, images (absolute paths),
    text, category_id, subcategory_id), ``item_product`` (product position of each image
    item), ``item_paths``, and the category names (``category_names[id]``) when known."""

    name: str
    annotation_file: str
    products: list
    item_product: list
    item_paths: list
    category_names: dict = field(default_factory=dict)

    def category(self, product_index):
        category_id = self.products[product_index]["category_id"]
        if category_id in self.category_names:
            return self.category_names[category_id]
        return "unknown" if category_id < 0 else f"category {category_id}"


def read_split(data_dir, split="val", config=None):
    """The FashionGen ``split`` under ``data_dir`` as the run with ``config`` (the checkpoint's
    config, or None for the defaults) evaluates it (tools/catalog.py: its annotation file, or
    the val split held out of the train file with a dev split). Errors name the folder or
    file."""
    from mmf_fashionvil.data.base import DataError
    from mmf_fashionvil.tools.catalog import category_names, fashiongen_split

    try:
        root, database = fashiongen_split(data_dir, split, config)
        names = category_names(root)
    except DataError as error:
        raise VisualizeError(str(error)) from None
    products = database.products
    item_product = [p for p, _ in database.image_items]
    item_paths = [products[p]["images"][i] for p, i in database.image_items]
    for item_path in item_paths:
        if not os.path.isfile(item_path):
            raise VisualizeError(f"{database.path}: image {item_path} does not exist")
    return Split(split, database.path, products, item_product, item_paths, names)


# ---------------------------------------------------------------------------- the ranking
def pessimistic_order(scores, positive_mask):
    """Each query's candidates best first as the evaluation counts them: by score,
    descending; among equal scores wrong candidates before correct ones (ties count against
    the query), then by candidate position. The position of a query's first correct
    candidate in this order is its rank under
    :func:`mmf_fashionvil.metrics.ranking.positive_ranks`.

    scores [Q, C] float; positive_mask [Q, C] bool. Returns LongTensor [Q, C]."""
    if scores.shape != positive_mask.shape:
        raise ValueError(f"pessimistic_order: scores {tuple(scores.shape)} and positive_mask "
                         f"{tuple(positive_mask.shape)} differ in shape")
    if torch.isnan(scores).any():
        raise ValueError("pessimistic_order: scores contain NaN")
    negatives_first = torch.argsort(positive_mask.to(torch.int8), dim=1, stable=True)
    by_score = torch.argsort(scores.gather(1, negatives_first), dim=1, descending=True,
                             stable=True)
    return negatives_first.gather(1, by_score)


def query_ranks(scores, positive_mask):
    """Each query's rank (0 = its best correct candidate comes first): the number of wrong
    candidates scoring >= the best correct one."""
    from mmf_fashionvil.metrics.ranking import positive_ranks

    return positive_ranks(scores, positive_mask)


def recall(ranks, ks=(1, 5, 10)):
    """{k: percentage of queries with rank < k}."""
    return {k: 100.0 * float((ranks < k).float().mean()) for k in ks}


def choose_queries(count, total, seed):
    """``count`` distinct query positions out of ``total``, drawn with ``seed``, sorted."""
    return sorted(random.Random(seed).sample(range(total), min(count, total)))


def grid_rows(scores, positive_mask, queries, k):
    """What a grid shows for each query: {"query" (the number ``queries`` gives it), "rank", "top": [{"candidate", "score", "correct"}] (its k best candidates in
    :func:`pessimistic_order`)}. ``scores`` / ``positive_mask`` [len(queries), C] are the
    queries' rows."""
    order = pessimistic_order(scores, positive_mask)[:, :k]
    ranks = query_ranks(scores, positive_mask)
    rows = []
    for row, query in enumerate(queries):
        top = [{"candidate": int(c), "score": float(scores[row, c]),
                "correct": bool(positive_mask[row, c])} for c in order[row]]
        rows.append({"query": int(query), "rank": int(ranks[row]), "top": top})
    return rows


def _query_rows(queries, keys, query_targets, key_matches, chosen, k):
    """grid_rows of the ``chosen`` queries: dot products with every key (queries @ keys.T),
    the correct keys those whose match equals the query's target."""
    chosen_tensor = torch.tensor(chosen, dtype=torch.long)
    scores = queries[chosen_tensor] @ keys.t()
    positive = query_targets[chosen_tensor, None] == key_matches[None, :]
    return grid_rows(scores, positive, chosen, k)


def retrieval_report(split, image_embeddings, text_embeddings, num_queries, seed, k):
    """The JSON-ready content of the grids (``text_to_image`` and ``image_to_text`` rows with
    product ids, captions / image paths and category names) and the split's full-ranking R@K
    (``recall``: itr_r@K / tir_r@K in percent, the evaluation's ``general`` keys)."""
    from mmf_fashionvil.metrics.ranking import chunked_ranks

    images, texts = image_embeddings.float().cpu(), text_embeddings.float().cpu()
    products = split.products
    item_product = torch.tensor(split.item_product, dtype=torch.long)
    product_index = torch.arange(len(products))
    # The evaluation's full ranking (metrics/retrieval.py FullRankingRetrieval).
    values = {f"itr_r@{key}": value for key, value in recall(
        chunked_ranks(images, texts, item_product, product_index)).items()}
    values.update({f"tir_r@{key}": value for key, value in recall(
        chunked_ranks(texts, images, product_index, item_product)).items()})

    text_to_image = _query_rows(texts, images, product_index, item_product,
                                choose_queries(num_queries, len(products), seed), k)
    for row in text_to_image:
        row.update(product_id=products[row["query"]]["id"],
                   caption=products[row["query"]]["text"], category=split.category(row["query"]))
        for candidate in row["top"]:
            product = split.item_product[candidate["candidate"]]
            candidate.update(image=split.item_paths[candidate["candidate"]],
                             product_id=products[product]["id"],
                             category=split.category(product))
    image_to_text = _query_rows(images, texts, item_product, product_index,
                                choose_queries(num_queries, len(split.item_paths), seed + 1), k)
    for row in image_to_text:
        product = split.item_product[row["query"]]
        row.update(image=split.item_paths[row["query"]], product_id=products[product]["id"],
                   category=split.category(product))
        for candidate in row["top"]:
            candidate.update(product_id=products[candidate["candidate"]]["id"],
                             caption=products[candidate["candidate"]]["text"],
                             category=split.category(candidate["candidate"]))
    return {"split": split.name, "annotation_file": split.annotation_file,
            "num_images": len(split.item_paths), "num_texts": len(products), "top_k": k,
            "seed": seed, "recall": values, "text_to_image": text_to_image,
            "image_to_text": image_to_text}
