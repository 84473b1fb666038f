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
import contextlib

import numpy as np
import torch

from mmf.modules.metrics import BaseMetric

QUERY_CHUNK = 1024  # query rows scored at once when re-ranking
# Scores computed at once by chunked_ranks (fp32: 128 MB): bounds its memory for any split.
SCORE_BLOCK = 2**25


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

    Runs on the evaluation device (:func:`evaluation_device`; the inputs' device by default)
    in blocks of queries against all keys, at most SCORE_BLOCK scores at a time, so memory is
    bounded by that, not by the split. Without re-ranking no [Q, K] mask is built: the keys
    are sorted by their match so that each query's positives (and own image) are a few known
    columns, whose scores are gathered from the block; a query's rank is then one
    compare-and-count over its row minus the gathered columns that pass the compare (the
    same values, so ties are counted exactly as :func:`positive_ranks` counts them).
    Returns LongTensor [Q] on the CPU."""
    device = _evaluation_device or queries.device
    queries, keys = queries.to(device), keys.to(device)
    query_targets, key_matches = query_targets.to(device), key_matches.to(device)
    if query_own_ids is not None:
        query_own_ids, key_ids = query_own_ids.to(device), key_ids.to(device)
    queries, keys = queries.float(), keys.float()
    if rerank is not None:
        return _reranked_ranks(queries, keys, query_targets, key_matches, query_own_ids,
                               key_ids, rerank)
    with _without_autocast(device):
        return _ranks_by_counting(queries, keys, query_targets, key_matches, query_own_ids,
                                  key_ids)


def _without_autocast(device):
    """Scores in fp32 even inside autocast (a metric that re-ranks runs under it, for the ITM
    model): bf16 scores would create ties that are not there."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _ranks_by_counting(queries, keys, query_targets, key_matches, query_own_ids, key_ids):
    # Keys in match order: the positives of a query are the columns [first, first + count).
    order = torch.argsort(key_matches, stable=True)
    keys, key_matches = keys[order], key_matches[order]
    positive_columns = _column_runs(key_matches, query_targets)
    missing = (positive_columns[1] == 0).nonzero().flatten()
    if len(missing):
        raise ValueError(
            f"positive_ranks: {len(missing)} queries (first: row {int(missing[0])}) have no "
            "positive among their candidates"
        )
    excluded_columns = None
    if query_own_ids is not None:
        # The query's own image(s), unless a positive, take no part in its ranking.
        ordered_ids = key_ids[order]
        id_order = torch.argsort(ordered_ids, stable=True)
        first, count = _column_runs(ordered_ids[id_order], query_own_ids)
        excluded_columns = (id_order, first, count)

    if not (torch.isfinite(queries).all() and torch.isfinite(keys).all()):
        # Checked on the embeddings, not on every score: that pass cost as much as the count.
        raise ValueError("positive_ranks: scores contain NaN (an embedding is not finite)")
    ranks = []
    rows_per_block = max(1, min(len(queries), SCORE_BLOCK // max(1, len(keys))))
    score_block = block_scorer(keys)
    for start in range(0, len(queries), rows_per_block):
        rows = slice(start, start + rows_per_block)
        scores = score_block(queries[rows])
        positive_scores = _gather_columns(
            scores, _run_columns(*(c[rows] for c in positive_columns)))
        best = positive_scores.max(dim=1).values
        at_or_above = _count_at_or_above(scores, best)
        # The positives counted above (their -inf padding never is).
        at_or_above -= (positive_scores >= best[:, None]).sum(dim=1)
        if excluded_columns is not None:
            id_order, first, count = excluded_columns
            own_columns = _run_columns(first[rows], count[rows], id_order)
            own = _gather_columns(scores, own_columns)
            own_is_positive = key_matches[own_columns.clamp(min=0)] == query_targets[rows, None]
            at_or_above -= ((own >= best[:, None]) & ~own_is_positive).sum(dim=1)
        ranks.append(at_or_above)
    return torch.cat(ranks).cpu()


def block_scorer(keys):
    """A function: queries [B, D] -> their dot products with ``keys`` [K, D], [B, K]. On the
    CPU through NumPy's BLAS (measured 1.6x torch's on this project's AMD machines); the
    same values for the same inputs, so two rankings that use it see the same ties."""
    if keys.device.type == "cpu":
        keys_t = np.ascontiguousarray(keys.detach().numpy().T)
        return lambda queries: torch.from_numpy(queries.detach().numpy() @ keys_t)
    keys_t = keys.t()
    return lambda queries: queries @ keys_t


def _count_at_or_above(scores, thresholds):
    """LongTensor [Q]: entries of each row of ``scores`` [Q, K] >= its threshold [Q]. On the
    CPU through NumPy (on the same memory): its compare and count took a tenth of torch's
    ``(scores >= t).sum(1)``, which would cost as much as the score matmul itself."""
    if scores.device.type == "cpu":
        counts = np.count_nonzero(scores.numpy() >= thresholds.numpy()[:, None], axis=1)
        return torch.from_numpy(counts).long()
    return (scores >= thresholds[:, None]).sum(dim=1)


def _column_runs(sorted_values, wanted):
    """(first, count) [Q]: where each of ``wanted`` [Q] occurs as a run in ``sorted_values``."""
    wanted = wanted.to(sorted_values.dtype)
    first = torch.searchsorted(sorted_values, wanted, side="left")
    return first, torch.searchsorted(sorted_values, wanted, side="right") - first


def _run_columns(first, count, column_of=None):
    """[Q, max count] columns of each run (first + 0..count-1, mapped through ``column_of``),
    -1 past a run's end."""
    width = max(1, int(count.max())) if len(count) else 1
    offsets = torch.arange(width, device=first.device)
    columns = first[:, None] + offsets
    if column_of is not None:
        columns = column_of[columns.clamp(max=len(column_of) - 1)]
    return columns.masked_fill(offsets >= count[:, None], -1)


def _gather_columns(scores, columns):
    """The scores [Q, max count] at each query's run of columns (``_run_columns``), -inf
    past its end."""
    gathered = scores.gather(1, columns.clamp(min=0))
    return gathered.masked_fill(columns < 0, float("-inf"))


def _reranked_ranks(queries, keys, query_targets, key_matches, query_own_ids, key_ids, rerank):
    """chunked_ranks with ITM re-ranking: full masks per block of queries (rare path)."""
    ranks = []
    k, pair_scores = rerank
    for start in range(0, len(queries), QUERY_CHUNK):
        stop = start + QUERY_CHUNK
        with _without_autocast(queries.device):
            scores = queries[start:stop] @ keys.t()
        positive = query_targets[start:stop, None] == key_matches[None, :]
        candidate = torch.ones_like(positive)
        if query_own_ids is not None:
            candidate = positive | (query_own_ids[start:stop, None] != key_ids[None, :])
        positive, candidate = positive.cpu(), candidate.cpu()
        scores = rerank_top_k(scores.cpu(), positive, candidate, k,
                              lambda q, c: pair_scores(q + start, c))
        ranks.append(positive_ranks(scores, positive, candidate))
    return torch.cat(ranks)


_evaluation_device = None  # set by evaluation_device() while the trainer computes metrics


@contextlib.contextmanager
def evaluation_device(device):
    """Runs :func:`chunked_ranks` on ``device`` (the GPU when evaluating on one) inside."""
    global _evaluation_device
    previous, _evaluation_device = _evaluation_device, torch.device(device)
    try:
        yield
    finally:
        _evaluation_device = previous


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
