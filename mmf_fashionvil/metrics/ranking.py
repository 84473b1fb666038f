"""The ranking math and the base class every FashionViL metric shares (SPEC §3, §9).

MMF rc10 metrics score one batch at a time; retrieval needs the whole split. A
:class:`DatasetMetric` therefore works in two steps (the trainer drives them):

1. ``collect(sample_list, model_output) -> dict[str, Tensor]`` per batch: detached CPU
   tensors whose first dimension is the batch;
2. ``compute(collected) -> dict[str, float]`` once, on the per-key concatenation over all
   batches and ranks with duplicate rows removed by ``sample_index``. The result does not
   depend on the order of the rows. A metric whose ``needs_model`` is true is called as
   ``compute(collected, model=model)`` (ITM re-ranking scores pairs with the model).

Ranking convention (every metric of this package): a query's rank is the number of *negative*
candidates whose score is greater than OR EQUAL to the best-scoring positive — ties count
against the query (pessimistic), so a constant model scores ~0, never 100. A hit at K means
rank < K. Other positives of a query are never its competitors.
"""
import torch

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


def chunked_ranks(queries, keys, query_targets, key_matches, query_own_ids=None,
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


def sorted_by_sample_index(collected):
    """The collected rows in sample_index order, so results never depend on gather order."""
    order = torch.argsort(collected["sample_index"])
    return {key: value[order] for key, value in collected.items()}


def first_rows_of(ids):
    """Row index of the first occurrence of each distinct id (ids [N], or [N, M] rows
    compared whole), ordered by id; and the distinct ids."""
    unique_ids, inverse = torch.unique(ids, dim=0, return_inverse=True)
    positions = torch.arange(len(ids))
    first = torch.full((len(unique_ids),), len(ids), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return first, unique_ids
