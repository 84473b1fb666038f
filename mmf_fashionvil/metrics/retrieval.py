"""Cross-modal retrieval (XMR) metrics, all values in percent: ``fashionvil_retrieval``
(full ranking) and ``fashionvil_retrieval_sample100`` (sample-100), with optional ITM
re-ranking of each query's top candidates.

Collected fields (``mo`` = model_output, ``sl`` = sample_list):

- ``fashionvil_retrieval`` ("general" full ranking): mo ``image_embedding``,
  ``text_embedding``; sl ``id`` (product), ``sample_index``. One row per (product, image)
  item; every row of a product carries the product's text. Texts are de-duplicated by
  product id (the row with the smallest ``sample_index`` speaks for it).
- ``fashionvil_retrieval_sample100`` ("kaleido", the authors' sample-100): the same plus sl
  ``subcategory``.
  Both take ``itm_rerank_top_k``; when > 0 they also collect mo ``visual_tokens`` and sl
  ``input_ids``, ``input_mask``, and need the model (``needs_model``, see below).
"""
import hashlib
import json
import os
from collections import defaultdict

import numpy as np
import torch

from mmf.common.registry import registry
from mmf_fashionvil.metrics.ranking import (
    DatasetMetric,
    chunked_ranks,
    first_rows_of,
    positive_ranks,
    recall_at_k,
    rerank_top_k,
    sorted_by_sample_index,
)

ITM_PAIR_CHUNK = 256  # (text, image) pairs per fusion-encoder pass when re-ranking
SCORE_CHUNK = 256  # sample-100 queries scored at once (a [chunk, 101, D] gather)


def itm_pair_scorer(model, input_ids, input_mask, visual_tokens):
    """pair_scores(text_rows, image_rows) -> ``model.itm_match_scores`` of those pairs, in
    chunks on the model's device (without gradient, model in eval mode)."""
    if not hasattr(model, "itm_match_scores"):
        raise ValueError(f"ITM re-ranking needs a model with itm_match_scores, got "
                         f"{type(model).__name__}")
    device = next(model.parameters()).device

    def pair_scores(text_rows, image_rows):
        was_training = model.training
        model.eval()
        values = []
        with torch.no_grad():
            for start in range(0, len(text_rows), ITM_PAIR_CHUNK):
                texts = text_rows[start:start + ITM_PAIR_CHUNK]
                images = image_rows[start:start + ITM_PAIR_CHUNK]
                values.append(model.itm_match_scores(
                    input_ids[texts].to(device), input_mask[texts].to(device),
                    visual_tokens[images].to(device)).double().cpu())
        model.train(was_training)
        return torch.cat(values)

    return pair_scores


RETRIEVAL_KS = (1, 5, 10)


def _retrieval_keys(protocol, itr, tir):
    values = {f"{protocol}/itr_r@{k}": v for k, v in itr.items()}
    values.update({f"{protocol}/tir_r@{k}": v for k, v in tir.items()})
    values[f"{protocol}/r_mean"] = sum(values.values()) / len(values)
    return values


class _RetrievalMetric(DatasetMetric):
    """What the two XMR protocols share: R@K keys and optional ITM re-ranking.

    With ``itm_rerank_top_k`` = k > 0 the metric also reports ``<protocol>_itm_top{k}/*``:
    each query's k best candidates by the embeddings re-ordered by the model's ITM head
    (``itm_match_scores`` on the collected mo ``visual_tokens`` and sl ``input_ids`` /
    ``input_mask``; build the head with model_config.fashionvil.heads.itm.rerank_top_k).
    The trainer then passes the model to :meth:`compute`; the pairs run on rank 0."""

    model_output_keys = ("image_embedding", "text_embedding")

    def __init__(self, name, ks, itm_rerank_top_k):
        self.ks = tuple(int(k) for k in ks)
        self.itm_rerank_top_k = int(itm_rerank_top_k or 0)
        if self.itm_rerank_top_k < 0:
            raise ValueError(f"metric {name}: itm_rerank_top_k must be >= 0, got "
                             f"{itm_rerank_top_k}")
        if self.itm_rerank_top_k:
            self.model_output_keys = (*self.model_output_keys, "visual_tokens")
            self.sample_list_keys = (*self.sample_list_keys, "input_ids", "input_mask")
        super().__init__(name)

    @property
    def needs_model(self):
        return self.itm_rerank_top_k > 0

    def _itm_scorer(self, rows, model):
        """pair_scores(text_rows, image_rows) over rows of the collected split."""
        if model is None:
            raise ValueError(f"metric {self.name} re-ranks with ITM and needs the model: run "
                             "it with training.trainer=fashionvil_trainer")
        return itm_pair_scorer(model, rows["input_ids"], rows["input_mask"],
                               rows["visual_tokens"])


@registry.register_metric("fashionvil_retrieval")
class FullRankingRetrieval(_RetrievalMetric):
    """Image->text and text->image retrieval over the whole split ("general" protocol).
    ITR: each image ranks every product's text; TIR: each product's text ranks every image,
    a hit when ANY image of the product is within the top K."""

    sample_list_keys = ("id", "sample_index")

    def __init__(self, ks=RETRIEVAL_KS, itm_rerank_top_k=0):
        super().__init__("fashionvil_retrieval", ks, itm_rerank_top_k)

    def compute(self, collected, model=None):
        self._require(collected, self.required_params)
        rows = sorted_by_sample_index(collected)
        images, product_of_image = rows["image_embedding"], rows["id"]
        text_rows, product_ids = first_rows_of(product_of_image)
        texts = rows["text_embedding"][text_rows]
        itr = recall_at_k(chunked_ranks(images, texts, product_of_image, product_ids), self.ks)
        tir = recall_at_k(chunked_ranks(texts, images, product_ids, product_of_image), self.ks)
        values = _retrieval_keys("general", itr, tir)
        if self.itm_rerank_top_k:
            k, itm = self.itm_rerank_top_k, self._itm_scorer(rows, model)
            itr = chunked_ranks(images, texts, product_of_image, product_ids,
                                 rerank=(k, lambda image, text: itm(text_rows[text], image)))
            tir = chunked_ranks(texts, images, product_ids, product_of_image,
                                 rerank=(k, lambda text, image: itm(text_rows[text], image)))
            values.update(_retrieval_keys(f"general_itm_top{k}", recall_at_k(itr, self.ks),
                                          recall_at_k(tir, self.ks)))
        return values


DRAWS_FORMAT = 2  # version of the draws-file layout; files of another version are refused
DIRECTIONS = ("itr", "tir")


@registry.register_metric("fashionvil_retrieval_sample100")
class SampledRetrieval(_RetrievalMetric):
    """The FashionBERT/KaleidoBERT "sample-100" protocol as the authors' code runs it
    (``kaleido``), each direction drawn on its own:

    - ITR: ``num_queries`` random images (items), each ranked against its product's text
      plus ``num_negatives`` texts of other products;
    - TIR: ``num_queries`` random products' texts, each ranked against one random image of
      the product plus ``num_negatives`` images of other products (any image: a product with
      more images is drawn more often, possibly twice).

    Negatives are drawn without replacement from the query's subcategory; where it holds
    fewer, all of them are taken and the rest drawn from other subcategories, as the authors'
    top-k selection does. R@K is averaged over ``num_draws`` draws. ``num_queries: null``
    makes every image (ITR) and every product (TIR) a query: keys ``kaleido_all_queries/...``.

    The draws come from ``seed`` and, when ``draws_file`` is set, are saved there as JSON
    (items named by ``sample_index``; a text by the row that speaks for its product), one
    draw set per evaluated split, keyed by a fingerprint of its items (sample_index,
    product, subcategory); a saved set is reused for the same items, so two runs rank the
    same candidates, and a split with other items (a dev split next to the test split) gets
    its own set. A split with fewer than ``num_negatives`` other products gives its queries
    all of them."""

    sample_list_keys = ("id", "subcategory", "sample_index")

    def __init__(self, num_queries=1000, num_negatives=100, num_draws=5, seed=0,
                 draws_file=None, ks=RETRIEVAL_KS, itm_rerank_top_k=0):
        super().__init__("fashionvil_retrieval_sample100", ks, itm_rerank_top_k)
        if num_queries is not None and int(num_queries) < 1:
            raise ValueError(f"metric {self.name}: num_queries must be >= 1 or null (every "
                             f"query), got {num_queries}")
        self.settings = {"format": DRAWS_FORMAT,
                         "num_queries": None if num_queries is None else int(num_queries),
                         "num_negatives": int(num_negatives),
                         "num_draws": int(num_draws), "seed": int(seed)}
        self.protocol = "kaleido" if num_queries is not None else "kaleido_all_queries"
        self.draws_file = draws_file

    def compute(self, collected, model=None):
        self._require(collected, self.required_params)
        rows = sorted_by_sample_index(collected)
        draws = self.load_or_draw(rows["sample_index"], rows["id"], rows["subcategory"])
        row_of = {int(s): i for i, s in enumerate(rows["sample_index"])}
        images, texts = rows["image_embedding"], rows["text_embedding"]
        sides = {"itr": (images, texts), "tir": (texts, images)}
        protocols = [(self.protocol, dict.fromkeys(DIRECTIONS))]
        if self.itm_rerank_top_k:
            k, itm = self.itm_rerank_top_k, self._itm_scorer(rows, model)
            # Every row carries its product's text, so text rows are item rows here.
            protocols.append((f"{self.protocol}_itm_top{k}", {
                "itr": (k, lambda image, text: itm(text, image)), "tir": (k, itm)}))
        totals = defaultdict(float)
        for draw in draws:
            recall = defaultdict(dict)
            for direction in DIRECTIONS:
                query_rows = torch.tensor([row_of[s] for s in draw[direction]["queries"]])
                lists = draw[direction]["candidates"]
                # Candidate rows per query, positive first, padded with -1.
                candidates = torch.full((len(lists), max(map(len, lists))), -1,
                                        dtype=torch.long)
                for i, items in enumerate(lists):
                    candidates[i, :len(items)] = torch.tensor([row_of[s] for s in items])
                for protocol, reranks in protocols:
                    recall[protocol][direction] = self._draw_recall(
                        *sides[direction], query_rows, candidates, reranks[direction])
            for protocol, _ in protocols:
                values = _retrieval_keys(protocol, recall[protocol]["itr"],
                                         recall[protocol]["tir"])
                for key, value in values.items():
                    totals[key] += value / len(draws)
        return dict(totals)

    def _draw_recall(self, query_side, candidate_side, query_rows, candidates, rerank=None):
        """R@K of one draw and direction; ``rerank`` = (k, pair_scores(query_rows,
        candidate_rows))."""
        valid = candidates >= 0
        scores = torch.cat([  # a chunk of queries at a time bounds the [Q, width, D] gather
            torch.einsum("qd,qcd->qc", query_side[query_rows[start:start + SCORE_CHUNK]],
                         candidate_side[candidates[start:start + SCORE_CHUNK].clamp(min=0)])
            for start in range(0, len(query_rows), SCORE_CHUNK)])
        positive = torch.zeros_like(valid)
        positive[:, 0] = True
        if rerank is not None:
            k, pair_scores = rerank
            scores = rerank_top_k(
                scores, positive, valid, k,
                lambda query, column: pair_scores(query_rows[query], candidates[query, column]))
        return recall_at_k(positive_ranks(scores, positive, valid), self.ks)

    # ------------------------------------------------------------------ draws
    def load_or_draw(self, sample_index, product_id, subcategory):
        """The draws: the set ``draws_file`` holds for these items, else made from the seed
        (and added to ``draws_file`` when set). Each draw: {direction: {"queries":
        [sample_index], "candidates": [[positive, negatives...] per query]}}."""
        items = [sample_index.tolist(), product_id.tolist(), subcategory.tolist()]
        key = hashlib.sha1(json.dumps(items).encode()).hexdigest()[:16]
        draw_sets = {}
        if self.draws_file and os.path.exists(self.draws_file):
            draw_sets = self._read_draw_sets()
            if key in draw_sets:
                draws = draw_sets[key]["draws"]
                self._check_draws(draws, sample_index, product_id)
                return draws
        draws = self.make_draws(sample_index, product_id, subcategory)
        if self.draws_file:
            draw_sets[key] = {"num_items": len(sample_index), "draws": draws}
            self._write_draw_sets(draw_sets)
        return draws

    def make_draws(self, sample_index, product_id, subcategory):
        """Seeded draws for rows given in sample_index order (see :meth:`load_or_draw`)."""
        rng = np.random.default_rng(self.settings["seed"])
        sample_index = sample_index.numpy()
        product_id, subcategory = product_id.numpy(), subcategory.numpy()
        text_rows, _ = first_rows_of(torch.from_numpy(product_id))
        text_rows = np.sort(text_rows.numpy())
        image_rows = np.arange(len(product_id))
        # ITR: image queries, text candidates; TIR: text queries, image candidates.
        pools = {"itr": (image_rows, text_rows), "tir": (text_rows, image_rows)}
        draws = []
        for _ in range(self.settings["num_draws"]):
            draw = {}
            for direction in DIRECTIONS:
                query_rows, candidate_rows = pools[direction]
                queries, candidates = self._draw(rng, query_rows, candidate_rows, product_id,
                                                 subcategory)
                draw[direction] = {
                    "queries": sample_index[queries].tolist(),
                    "candidates": [sample_index[rows].tolist() for rows in candidates]}
            draws.append(draw)
        return draws

    def _draw(self, rng, query_rows, candidate_rows, product_id, subcategory):
        """Query rows and, per query, candidate rows: one random positive (same product),
        then the negatives (see the class doc)."""
        num_queries = self.settings["num_queries"]
        if num_queries is not None and num_queries < len(query_rows):
            query_rows = np.sort(rng.choice(query_rows, num_queries, replace=False))
        candidate_product = product_id[candidate_rows]
        candidate_group = subcategory[candidate_rows]
        wanted = self.settings["num_negatives"]
        candidates = []
        for row in query_rows:
            other = candidate_product != product_id[row]
            same_group = candidate_group == subcategory[row]
            positive = rng.choice(candidate_rows[~other])
            negatives = candidate_rows[other & same_group]
            if len(negatives) >= wanted:
                negatives = rng.choice(negatives, wanted, replace=False)
            else:
                fill = candidate_rows[other & ~same_group]
                fill = rng.choice(fill, min(wanted - len(negatives), len(fill)), replace=False)
                negatives = np.concatenate([negatives, fill])
            candidates.append(np.concatenate([[positive], negatives]).astype(np.int64))
        return query_rows, candidates

    def _read_draw_sets(self):
        try:
            with open(self.draws_file) as handle:
                saved = json.load(handle)
            draw_sets = dict(saved["draw_sets"])
            recorded = {key: saved.get(key) for key in self.settings}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                f"sample-100 draws file {self.draws_file} is not a draws file written by this "
                f"metric ({error!r}); delete it to draw again"
            ) from error
        if recorded != self.settings:
            raise ValueError(
                f"sample-100 draws file {self.draws_file} was drawn with {recorded}, but the "
                f"metric is configured with {self.settings} (format = the file layout's "
                "version): delete the file or point draws_file elsewhere"
            )
        return draw_sets

    def _check_draws(self, draws, sample_index, product_id):
        """Every saved item is in the split, every positive of the query's product, every
        negative of another product; ITR candidates and TIR queries are product texts."""
        row_of = {int(s): i for i, s in enumerate(sample_index)}
        product_id = product_id.tolist()
        text_rows, _ = first_rows_of(torch.tensor(product_id))
        text_items = {int(sample_index[r]) for r in text_rows}
        where = f"sample-100 draws file {self.draws_file}"
        for draw in draws:
            for direction in DIRECTIONS:
                part = draw[direction]
                for query, items in zip(part["queries"], part["candidates"]):
                    unknown = [s for s in [query, *items] if s not in row_of]
                    if unknown:
                        raise ValueError(
                            f"{where} names items {unknown[:5]} that are not in this "
                            "evaluation split: it was drawn for other data")
                    texts = items if direction == "itr" else [query]
                    owners = [product_id[row_of[s]] for s in items]
                    own = product_id[row_of[query]]
                    if (not set(texts) <= text_items or owners[0] != own
                            or own in owners[1:]):
                        raise ValueError(
                            f"{where}: {direction} query {query} has candidates {items[:5]}... "
                            "that are not its product's positive followed by other products' "
                            "items: the file was drawn for other data")

    def _write_draw_sets(self, draw_sets):
        directory = os.path.dirname(os.path.abspath(self.draws_file))
        os.makedirs(directory, exist_ok=True)
        # Write then rename: a reader never sees a partial file.
        temporary = f"{self.draws_file}.{os.getpid()}.tmp"
        with open(temporary, "w") as handle:
            json.dump({"protocol": self.protocol, **self.settings, "draw_sets": draw_sets},
                      handle)
        os.replace(temporary, self.draws_file)
