"""Dataset-level evaluation metrics for FashionViL (SPEC §3, §9), all values in percent.

MMF rc10 metrics score one batch at a time; retrieval needs the whole split. A
:class:`DatasetMetric` therefore works in two steps (the trainer drives them):

1. ``collect(sample_list, model_output) -> dict[str, Tensor]`` per batch: detached CPU
   tensors whose first dimension is the batch;
2. ``compute(collected) -> dict[str, float]`` once, on the per-key concatenation over all
   batches and ranks with duplicate rows removed by ``sample_index``. The result does not
   depend on the order of the rows. A metric whose ``needs_model`` is true is called as
   ``compute(collected, model=model)`` (ITM re-ranking scores pairs with the model).

Ranking convention (every metric here): a query's rank is the number of *negative*
candidates whose score is greater than OR EQUAL to the best-scoring positive — ties count
against the query (pessimistic), so a constant model scores ~0, never 100. A hit at K means
rank < K. Other positives of a query are never its competitors.

Collected fields per metric (``mo`` = model_output, ``sl`` = sample_list):

- ``fashionvil_retrieval`` ("general" full ranking): mo ``image_embedding``,
  ``text_embedding``; sl ``id`` (product), ``sample_index``. One row per (product, image)
  item; every row of a product carries the product's text. Texts are de-duplicated by
  product id (the row with the smallest ``sample_index`` speaks for it).
- ``fashionvil_retrieval_sample100`` ("kaleido"): the same plus sl ``subcategory``.
  Both take ``itm_rerank_top_k``; when > 0 they also collect mo ``visual_tokens`` and sl
  ``input_ids``, ``input_mask``, and need the model (``needs_model``, see below).
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
- ``fashionvil_accuracy`` / ``fashionvil_macro_f1``: mo ``scores`` [B, C] (collected as the
  argmax ``prediction``), sl ``targets``.
"""
import hashlib
import json
import os
from collections import defaultdict

import numpy as np
import torch

from mmf.common.registry import registry
from mmf.modules.metrics import BaseMetric

QUERY_CHUNK = 1024  # query rows scored at once: bounds memory for full-split rankings


# --------------------------------------------------------------------------- ranking math
def positive_ranks(scores, positive_mask, candidate_mask=None):
    """Rank of each query's best positive: the number of negative candidates (candidate and
    not positive) scoring >= the best positive (ties count against the query).

    scores [Q, C] float; positive_mask [Q, C] bool; candidate_mask [Q, C] bool (default all)
    marks the entries that take part in the ranking. Returns LongTensor [Q]."""
    if scores.shape != positive_mask.shape:
        raise ValueError(
            f"positive_ranks: scores {tuple(scores.shape)} and positive_mask "
            f"{tuple(positive_mask.shape)} differ in shape"
        )
    if candidate_mask is None:
        candidate_mask = torch.ones_like(positive_mask)
    positives = positive_mask & candidate_mask
    missing = (~positives.any(dim=1)).nonzero().flatten()
    if len(missing):
        raise ValueError(
            f"positive_ranks: {len(missing)} queries (first: row {int(missing[0])}) have no "
            "positive among their candidates"
        )
    if torch.isnan(scores[candidate_mask]).any():
        raise ValueError("positive_ranks: scores contain NaN")
    best_positive = scores.masked_fill(~positives, float("-inf")).max(dim=1).values
    negatives = candidate_mask & ~positive_mask
    return ((scores >= best_positive[:, None]) & negatives).sum(dim=1)


def recall_at_k(ranks, ks):
    """{k: percentage of queries with rank < k} for the ranks of :func:`positive_ranks`."""
    if len(ranks) == 0:
        raise ValueError("recall_at_k: no queries")
    return {k: 100.0 * float((ranks < k).float().mean()) for k in ks}


def rerank_top_k(scores, positive_mask, candidate_mask, k, pair_scores):
    """Scores in which each query's top ``k`` candidates (by ``scores``) are re-ordered by
    ``pair_scores(query_positions [P], candidate_positions [P]) -> [P]`` and lifted above
    every other candidate, whose order is kept (ITM re-ranking). Candidates tied at the
    k-th place are taken negatives first, so re-ranking never turns a pessimistic tie into
    a hit: a query's R@K' for K' >= k is the same before and after. Returns float64
    [Q, C], -inf outside ``candidate_mask``, for :func:`positive_ranks`."""
    scores = scores.double().masked_fill(~candidate_mask, float("-inf"))
    negatives_first = torch.argsort(positive_mask.to(torch.int8), dim=1, stable=True)
    by_score = torch.argsort(scores.gather(1, negatives_first), dim=1, descending=True,
                             stable=True)
    top = negatives_first.gather(1, by_score[:, :min(k, scores.size(1))])
    taken = candidate_mask.gather(1, top)
    query_positions = torch.arange(len(scores))[:, None].expand_as(top)[taken]
    candidate_positions = top[taken]
    if len(candidate_positions) == 0:
        return scores
    match = torch.as_tensor(pair_scores(query_positions, candidate_positions)).double()
    if match.shape != candidate_positions.shape or torch.isnan(match).any():
        raise ValueError(f"rerank_top_k: pair_scores gave {tuple(match.shape)} values (NaN "
                         f"included?) for {len(candidate_positions)} pairs")
    lift = scores[candidate_mask].max() - match.min() + 1.0
    scores[query_positions, candidate_positions] = match + lift
    return scores


def _chunked_ranks(queries, keys, query_targets, key_matches, query_own_ids=None,
                   key_ids=None, rerank=None):
    """:func:`positive_ranks` of queries [Q, D] against keys [K, D] by dot product, the
    positives of query i being the keys with ``key_matches == query_targets[i]``. With
    ``query_own_ids``/``key_ids``, the key that is the query's own image (TGIR's reference)
    is left out of the query's ranking unless it is itself a positive. ``rerank`` =
    (k, pair_scores(query_rows, key_rows)) re-ranks each query's top k (:func:`rerank_top_k`).
    Scores a chunk of queries at a time."""
    ranks = []
    for start in range(0, len(queries), QUERY_CHUNK):
        stop = start + QUERY_CHUNK
        scores = queries[start:stop] @ keys.t()
        positive = query_targets[start:stop, None] == key_matches[None, :]
        candidate = torch.ones_like(positive)
        if query_own_ids is not None:
            candidate = positive | (query_own_ids[start:stop, None] != key_ids[None, :])
        if rerank is not None:
            k, pair_scores = rerank
            scores = rerank_top_k(scores, positive, candidate, k,
                                  lambda q, c: pair_scores(q + start, c))
        ranks.append(positive_ranks(scores, positive, candidate))
    return torch.cat(ranks)


ITM_PAIR_CHUNK = 256  # (text, image) pairs per fusion-encoder pass when re-ranking


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


# --------------------------------------------------------------------------- base class
class DatasetMetric(BaseMetric):
    """A metric over the whole evaluation split (see module doc). Subclasses list the fields
    they collect in ``model_output_keys`` / ``sample_list_keys`` and implement
    :meth:`compute`."""

    model_output_keys = ()
    sample_list_keys = ()

    def __init__(self, name):
        super().__init__(name)
        # rc10 keeps these fields of a batch's report for its metrics.
        self.required_params = list(self.model_output_keys) + list(self.sample_list_keys)

    def collect(self, sample_list, model_output):
        collected = {}
        for key in self.model_output_keys:
            collected[key] = self._field(model_output, key, "model output").detach().cpu()
        for key in self.sample_list_keys:
            collected[key] = self._field(sample_list, key, "sample list").detach().cpu()
        return collected

    def _field(self, source, key, where):
        if key not in source:
            raise ValueError(
                f"metric {self.name}: the {where} has no '{key}' (it has {sorted(source)})"
            )
        value = source[key]
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        return value.float() if value.is_floating_point() else value

    def compute(self, collected):
        raise NotImplementedError

    def _require(self, collected, keys):
        missing = [key for key in keys if key not in collected]
        if missing:
            raise ValueError(
                f"metric {self.name}: collected data lacks {missing} (has {sorted(collected)})"
            )
        lengths = {key: len(collected[key]) for key in keys}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"metric {self.name}: collected fields differ in length {lengths}")
        if next(iter(lengths.values())) == 0:
            raise ValueError(f"metric {self.name}: nothing was collected")

    def calculate(self, sample_list, model_output, *args, **kwargs):
        raise RuntimeError(
            f"metric {self.name} ranks the whole evaluation split and has no per-batch value: "
            "run it with training.trainer=fashionvil_trainer, which calls collect/compute"
        )


def _sorted_by_sample_index(collected):
    """The collected rows in sample_index order, so results never depend on gather order."""
    order = torch.argsort(collected["sample_index"])
    return {key: value[order] for key, value in collected.items()}


def _first_rows_of(ids):
    """Row index of the first occurrence of each distinct id (ids [N], or [N, M] rows
    compared whole), ordered by id; and the distinct ids."""
    unique_ids, inverse = torch.unique(ids, dim=0, return_inverse=True)
    positions = torch.arange(len(ids))
    first = torch.full((len(unique_ids),), len(ids), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return first, unique_ids


# --------------------------------------------------------------------------- XMR
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
        rows = _sorted_by_sample_index(collected)
        images, product_of_image = rows["image_embedding"], rows["id"]
        text_rows, product_ids = _first_rows_of(product_of_image)
        texts = rows["text_embedding"][text_rows]
        itr = recall_at_k(_chunked_ranks(images, texts, product_of_image, product_ids), self.ks)
        tir = recall_at_k(_chunked_ranks(texts, images, product_ids, product_of_image), self.ks)
        values = _retrieval_keys("general", itr, tir)
        if self.itm_rerank_top_k:
            k, itm = self.itm_rerank_top_k, self._itm_scorer(rows, model)
            itr = _chunked_ranks(images, texts, product_of_image, product_ids,
                                 rerank=(k, lambda image, text: itm(text_rows[text], image)))
            tir = _chunked_ranks(texts, images, product_ids, product_of_image,
                                 rerank=(k, lambda text, image: itm(text_rows[text], image)))
            values.update(_retrieval_keys(f"general_itm_top{k}", recall_at_k(itr, self.ks),
                                          recall_at_k(tir, self.ks)))
        return values


@registry.register_metric("fashionvil_retrieval_sample100")
class SampledRetrieval(_RetrievalMetric):
    """The FashionBERT/KaleidoBERT "sample-100" protocol ("kaleido"): each of
    ``num_queries`` random items is ranked against its positive plus ``num_negatives``
    items of other products of the SAME subcategory (one item per negative product); ITR
    ranks the texts of those items for the query's image, TIR their images for the query's
    text. R@K is averaged over ``num_draws`` draws.

    The draws come from ``seed`` and, when ``draws_file`` is set, are saved there as JSON
    (items named by ``sample_index``), one draw set per evaluated split, keyed by a
    fingerprint of its items (sample_index, product, subcategory); a saved set is reused for
    the same items, so two runs rank the same candidates, and a split with other items (a dev
    split next to the test split) gets its own set. A subcategory with fewer than ``num_negatives`` other products gives its
    queries all of them (fewer candidates; a product alone in its subcategory is a certain
    hit); a split smaller than ``num_queries`` uses every item as a query."""

    sample_list_keys = ("id", "subcategory", "sample_index")

    def __init__(self, num_queries=1000, num_negatives=100, num_draws=5, seed=0,
                 draws_file=None, ks=RETRIEVAL_KS, itm_rerank_top_k=0):
        super().__init__("fashionvil_retrieval_sample100", ks, itm_rerank_top_k)
        self.settings = {"num_queries": int(num_queries), "num_negatives": int(num_negatives),
                         "num_draws": int(num_draws), "seed": int(seed)}
        self.draws_file = draws_file

    def compute(self, collected, model=None):
        self._require(collected, self.required_params)
        rows = _sorted_by_sample_index(collected)
        draws = self.load_or_draw(rows["sample_index"], rows["id"], rows["subcategory"])
        row_of = {int(s): i for i, s in enumerate(rows["sample_index"])}
        totals = defaultdict(float)
        protocols = [("kaleido", None, None)]
        if self.itm_rerank_top_k:
            k, itm = self.itm_rerank_top_k, self._itm_scorer(rows, model)
            # Every row carries its product's text, so text rows are item rows here.
            protocols.append((f"kaleido_itm_top{k}", (k, lambda image, text: itm(text, image)),
                              (k, itm)))
        for draw in draws:
            query_rows = torch.tensor([row_of[s] for s in draw["queries"]])
            width = 1 + max((len(n) for n in draw["negatives"]), default=0)
            # Candidate rows per query, positive (the query row itself) first, padded with -1.
            candidates = torch.full((len(query_rows), width), -1, dtype=torch.long)
            candidates[:, 0] = query_rows
            for i, negatives in enumerate(draw["negatives"]):
                candidates[i, 1:1 + len(negatives)] = torch.tensor(
                    [row_of[s] for s in negatives], dtype=torch.long)
            for protocol, itr_rerank, tir_rerank in protocols:
                itr = self._draw_recall(rows["image_embedding"], rows["text_embedding"],
                                        query_rows, candidates, itr_rerank)
                tir = self._draw_recall(rows["text_embedding"], rows["image_embedding"],
                                        query_rows, candidates, tir_rerank)
                for key, value in _retrieval_keys(protocol, itr, tir).items():
                    totals[key] += value / len(draws)
        return dict(totals)

    def _draw_recall(self, query_side, candidate_side, query_rows, candidates, rerank=None):
        """R@K of one draw; ``rerank`` = (k, pair_scores(query_rows, candidate_rows))."""
        valid = candidates >= 0
        gathered = candidate_side[candidates.clamp(min=0)]  # [Q, width, D]
        scores = torch.einsum("qd,qcd->qc", query_side[query_rows], gathered)
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
        (and added to ``draws_file`` when set). Each draw: {"queries": [sample_index],
        "negatives": [[sample_index] per query]}."""
        items = [sample_index.tolist(), product_id.tolist(), subcategory.tolist()]
        key = hashlib.sha1(json.dumps(items).encode()).hexdigest()[:16]
        draw_sets = {}
        if self.draws_file and os.path.exists(self.draws_file):
            draw_sets = self._read_draw_sets()
            if key in draw_sets:
                draws = draw_sets[key]["draws"]
                self._check_draws(draws, sample_index, product_id, subcategory)
                return draws
        draws = self.make_draws(sample_index, product_id, subcategory)
        if self.draws_file:
            draw_sets[key] = {"num_items": len(sample_index), "draws": draws}
            self._write_draw_sets(draw_sets)
        return draws

    def make_draws(self, sample_index, product_id, subcategory):
        """Seeded draws for rows given in sample_index order (see :meth:`load_or_draw`)."""
        rng = np.random.default_rng(self.settings["seed"])
        sample_index, product_id = sample_index.tolist(), product_id.tolist()
        subcategory = subcategory.tolist()
        # subcategory -> product -> its rows, in sample_index order.
        rows_of = defaultdict(dict)
        for row, (product, group) in enumerate(zip(product_id, subcategory)):
            rows_of[group].setdefault(product, []).append(row)
        products_of = {group: list(products) for group, products in rows_of.items()}
        draws = []
        num_queries = min(self.settings["num_queries"], len(sample_index))
        for _ in range(self.settings["num_draws"]):
            query_rows = sorted(rng.choice(len(sample_index), num_queries, replace=False).tolist())
            negatives = []
            for row in query_rows:
                group = subcategory[row]
                products = products_of[group]
                own = products.index(product_id[row])
                count = min(self.settings["num_negatives"], len(products) - 1)
                chosen = []
                # Draw among the group's other products (skip over the query's own one),
                # then one item of each.
                for pick in rng.choice(len(products) - 1, count, replace=False).tolist():
                    product_rows = rows_of[group][products[pick + int(pick >= own)]]
                    chosen.append(sample_index[product_rows[int(rng.integers(len(product_rows)))]])
                negatives.append(chosen)
            draws.append({"queries": [sample_index[r] for r in query_rows],
                          "negatives": negatives})
        return draws

    def _read_draw_sets(self):
        try:
            with open(self.draws_file) as handle:
                saved = json.load(handle)
            draw_sets = dict(saved["draw_sets"])
            recorded = {key: saved[key] for key in self.settings}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"sample-100 draws file {self.draws_file} is not a draws file written by this "
                f"metric ({error!r}); delete it to draw again"
            ) from error
        if recorded != self.settings:
            raise ValueError(
                f"sample-100 draws file {self.draws_file} was drawn with {recorded}, but the "
                f"metric is configured with {self.settings}: delete the file or point "
                "draws_file elsewhere"
            )
        return draw_sets

    def _check_draws(self, draws, sample_index, product_id, subcategory):
        row_of = {int(s): i for i, s in enumerate(sample_index)}
        product_id, subcategory = product_id.tolist(), subcategory.tolist()
        for draw in draws:
            for query, negatives in zip(draw["queries"], draw["negatives"]):
                unknown = [s for s in [query, *negatives] if s not in row_of]
                if unknown:
                    raise ValueError(
                        f"sample-100 draws file {self.draws_file} names items {unknown[:5]} "
                        "that are not in this evaluation split: it was drawn for other data"
                    )
                q = row_of[query]
                for s in negatives:
                    n = row_of[s]
                    if product_id[n] == product_id[q] or subcategory[n] != subcategory[q]:
                        raise ValueError(
                            f"sample-100 draws file {self.draws_file}: negative {s} of query "
                            f"{query} is not another product of its subcategory in this "
                            "split: the file was drawn for other data"
                        )

    def _write_draw_sets(self, draw_sets):
        directory = os.path.dirname(os.path.abspath(self.draws_file))
        os.makedirs(directory, exist_ok=True)
        # Write then rename: a reader never sees a partial file.
        temporary = f"{self.draws_file}.{os.getpid()}.tmp"
        with open(temporary, "w") as handle:
            json.dump({"protocol": "kaleido", **self.settings, "draw_sets": draw_sets}, handle)
        os.replace(temporary, self.draws_file)


# --------------------------------------------------------------------------- query/gallery
class _QueryGalleryMetric(DatasetMetric):
    """Rows are queries (``is_query``) or gallery entries; queries are ranked within a
    gallery chosen per query. Subclasses name the fields and pick the galleries."""

    query_key = gallery_key = id_key = None

    def _split(self, collected):
        self._require(collected, self.required_params)
        rows = _sorted_by_sample_index(collected)
        is_query = rows["is_query"].bool()
        match = rows.get("match_id", rows[self.id_key])
        queries = {
            "embedding": rows[self.query_key][is_query], "own_id": rows[self.id_key][is_query],
            "target": rows["target_id"][is_query], "category": rows["category"][is_query],
        }
        gallery_rows = (~is_query).nonzero().flatten()
        # One entry per (category, image): the same gallery image emitted twice counts once.
        first, _ = _first_rows_of(
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
            return _chunked_ranks(
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
    """Outfit complementary item retrieval (CSA-Net protocol): each outfit query ranks only
    the candidate items of its blank's category; R@K per category, then the mean over
    categories weighted by their number of queries. Keys:
    ``target_category/{category}/r@K``, ``target_category/weighted/r@K``,
    ``target_category/r_mean``; ``categories`` optionally names the category indices."""

    model_output_keys = ("outfit_embedding", "item_embedding")
    sample_list_keys = ("is_query", "item_id", "target_id", "category", "sample_index")
    query_key, gallery_key, id_key = "outfit_embedding", "item_embedding", "item_id"

    def __init__(self, ks=(10, 30, 50), categories=None):
        super().__init__("fashionvil_ocir")
        self.ks = tuple(int(k) for k in ks)
        self.categories = None if categories is None else list(categories)

    def compute(self, collected):
        queries, gallery = self._split(collected)
        values, weighted = {}, dict.fromkeys(self.ks, 0.0)
        num_queries = len(queries["target"])
        for category in torch.unique(queries["category"]).tolist():
            name = self._category_name(category)
            query_rows = queries["category"] == category
            ranks = self._ranks(queries, gallery, query_rows, gallery["category"] == category,
                                f"category {name}")
            for k, value in recall_at_k(ranks, self.ks).items():
                values[f"target_category/{name}/r@{k}"] = value
                weighted[k] += value * len(ranks) / num_queries
        for k in self.ks:
            values[f"target_category/weighted/r@{k}"] = weighted[k]
        values["target_category/r_mean"] = sum(weighted.values()) / len(self.ks)
        return values


# --------------------------------------------------------------------------- SCR / CR
class _ClassificationMetric(DatasetMetric):
    model_output_keys = ("scores",)
    sample_list_keys = ("targets",)

    def collect(self, sample_list, model_output):
        scores = self._field(model_output, "scores", "model output")
        targets = self._field(sample_list, "targets", "sample list")
        if targets.dim() == 2 and targets.shape[1] == 1:
            targets = targets.squeeze(1)
        if scores.dim() != 2 or targets.dim() != 1:
            raise ValueError(
                f"metric {self.name}: expected scores [B, C] and class-index targets [B], got "
                f"{tuple(scores.shape)} and {tuple(targets.shape)}"
            )
        return {"prediction": scores.detach().argmax(dim=1).cpu(),
                "targets": targets.detach().long().cpu()}

    def _labels(self, collected):
        self._require(collected, ("prediction", "targets"))
        return collected["prediction"], collected["targets"]


@registry.register_metric("fashionvil_accuracy")
class Accuracy(_ClassificationMetric):
    """Top-1 accuracy (%) over the split. Key: ``accuracy``."""

    def __init__(self):
        super().__init__("fashionvil_accuracy")

    def compute(self, collected):
        prediction, targets = self._labels(collected)
        return {"accuracy": 100.0 * float((prediction == targets).float().mean())}


@registry.register_metric("fashionvil_macro_f1")
class MacroF1(_ClassificationMetric):
    """Macro-F1 (%) over the classes present in the split's targets — scikit-learn's
    ``f1_score(average="macro", labels=<classes in targets>)``. Per class F1 =
    2TP / (2TP + FP + FN); a class that is predicted but never true has no term of its own,
    while those wrong predictions still count as false negatives of the true classes.
    Key: ``macro_f1``."""

    def __init__(self):
        super().__init__("fashionvil_macro_f1")

    def compute(self, collected):
        prediction, targets = self._labels(collected)
        f1 = []
        for label in torch.unique(targets).tolist():
            true_positive = int(((prediction == label) & (targets == label)).sum())
            false_positive = int(((prediction == label) & (targets != label)).sum())
            false_negative = int(((prediction != label) & (targets == label)).sum())
            f1.append(2 * true_positive / (2 * true_positive + false_positive + false_negative))
        return {"macro_f1": 100.0 * sum(f1) / len(f1)}
