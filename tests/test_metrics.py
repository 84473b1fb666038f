import json
import random

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from mmf.common.registry import registry
from mmf.common.sample import SampleList
from mmf_fashionvil.metrics.classification import Accuracy, MacroF1
from mmf_fashionvil.metrics.query_gallery import (
    Fashion200kTextGuidedImageRetrieval,
    OutfitComplementaryRetrieval,
    TextGuidedImageRetrieval,
)
from mmf_fashionvil.metrics import ranking
from mmf_fashionvil.metrics.ranking import chunked_ranks, positive_ranks, recall_at_k, rerank_top_k
from mmf_fashionvil.metrics.retrieval import FullRankingRetrieval, SampledRetrieval


# ----------------------------------------------------------------------------- helpers
def tie_prone_embeddings(count, generator, dim=3):
    """Small-integer vectors: dot products are exact and often equal."""
    return torch.randint(-1, 2, (count, dim), generator=generator).float()


def dot(u, v):
    return sum(float(x) * float(y) for x, y in zip(u, v))


def brute_rank(query, candidates, positives):
    """Negatives (candidates not positive) scoring >= the best positive; explicit loops.
    candidates: {name: vector}; positives: set of names."""
    best = max(dot(query, candidates[name]) for name in positives)
    return sum(1 for name, vector in candidates.items()
               if name not in positives and dot(query, vector) >= best)


def percent_hits(ranks, k):
    return 100.0 * sum(1 for r in ranks if r < k) / len(ranks)


def split_and_merge(collected, seed=0):
    """Rows dealt to two "ranks" at random and concatenated rank after rank, as the trainer's
    gather does (so the row order changes)."""
    rows = list(range(len(collected["sample_index"])))
    random.Random(seed).shuffle(rows)
    shards = [sorted(rows[::2]), sorted(rows[1::2])]
    order = torch.tensor(shards[1] + shards[0])
    return {key: value[order] for key, value in collected.items()}


def collect_in_batches(metric, sample_fields, model_fields, batch_size=4):
    """Runs metric.collect on SampleList batches and concatenates per key (one rank)."""
    total = len(next(iter(sample_fields.values())))
    pieces = []
    for start in range(0, total, batch_size):
        rows = slice(start, start + batch_size)
        batch = SampleList({key: value[rows] for key, value in sample_fields.items()})
        outputs = {key: value[rows] for key, value in model_fields.items()}
        pieces.append(metric.collect(batch, outputs))
    return {key: torch.cat([piece[key] for piece in pieces]) for key in pieces[0]}


# ----------------------------------------------------------------------------- ranking math
def test_positive_ranks_count_ties_against_the_query():
    scores = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.5], [0.3, 0.4, 0.4]])
    positive = torch.tensor([[True, False, False], [True, True, False], [True, False, False]])
    # row 0: one tie -> rank 1; row 1: best positive 0.9 wins, other positive is no rival;
    # row 2: two negatives above.
    assert positive_ranks(scores, positive).tolist() == [1, 0, 2]
    candidates = torch.tensor([[True, False, True], [True, True, True], [True, True, False]])
    assert positive_ranks(scores, positive, candidates).tolist() == [0, 0, 1]
    assert recall_at_k(torch.tensor([1, 0, 2]), (1, 2)) == {1: pytest.approx(100 / 3),
                                                           2: pytest.approx(200 / 3)}


def test_positive_ranks_reject_queries_without_positive():
    with pytest.raises(ValueError, match="no positive"):
        positive_ranks(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))


def brute_force_ranks(queries, keys, targets, matches, own_ids=None, key_ids=None):
    """Per query, by loops: negatives (not own image unless positive) scoring >= the best
    positive, on scores computed one pair at a time in float64."""
    ranks = []
    for i, query in enumerate(queries.double()):
        scores = [float(query @ key) for key in keys.double()]
        positive = [int(m) == int(targets[i]) for m in matches]
        skip = [own_ids is not None and not positive[j] and int(key_ids[j]) == int(own_ids[i])
                for j in range(len(keys))]
        best = max(s for s, p in zip(scores, positive) if p)
        ranks.append(sum(1 for s, p, x in zip(scores, positive, skip)
                         if not p and not x and s >= best))
    return ranks


def test_chunked_ranks_by_hand():
    # Query 0 (target 7) = key 1 (its positive) and key 2 (negative, a tie) -> rank 1;
    # key 0 is its own image with score 3 > 2 -> left out. Query 1 (target 8): its positives
    # are keys 3 (score 0) and 4 (score 1); keys 0 and 1 score 1 (ties with the best) and
    # key 2 scores 0 -> rank 2.
    queries = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    keys = torch.tensor([[2.0, 1.0], [1.0, 1.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ranks = chunked_ranks(queries, keys, torch.tensor([7, 8]), torch.tensor([5, 7, 6, 8, 8]),
                          torch.tensor([100, 101]), torch.tensor([100, 1, 2, 3, 4]))
    assert ranks.tolist() == [1, 2]


@pytest.mark.parametrize("block", [7, 40, 2**25])  # one query per block .. all at once
def test_chunked_ranks_match_brute_force_in_any_block_size(monkeypatch, block):
    monkeypatch.setattr(ranking, "SCORE_BLOCK", block)
    generator = torch.Generator().manual_seed(block)
    # Small integer embeddings: exact scores with many ties.
    queries = torch.randint(-2, 3, (23, 4), generator=generator).float()
    keys = torch.randint(-2, 3, (31, 4), generator=generator).float()
    matches = torch.randint(0, 9, (31,), generator=generator)
    targets = matches[torch.randint(0, 31, (23,), generator=generator)]
    key_ids = torch.randint(0, 12, (31,), generator=generator)
    own_ids = torch.randint(0, 12, (23,), generator=generator)
    assert chunked_ranks(queries, keys, targets, matches).tolist() == brute_force_ranks(
        queries, keys, targets, matches)
    assert chunked_ranks(queries, keys, targets, matches, own_ids, key_ids).tolist() == (
        brute_force_ranks(queries, keys, targets, matches, own_ids, key_ids))
    with pytest.raises(ValueError, match="no positive"):
        chunked_ranks(queries, keys, targets + 100, matches)
    with pytest.raises(ValueError, match="NaN"):
        chunked_ranks(queries.masked_fill(queries > 1, float("nan")), keys, targets, matches)


def test_chunked_ranks_run_on_the_evaluation_device(monkeypatch):
    seen = []
    monkeypatch.setattr(ranking, "_ranks_by_counting",
                        lambda *tensors: seen.append({t.device.type for t in tensors
                                                      if t is not None}))
    chunked_ranks(torch.ones(2, 3), torch.ones(2, 3), torch.arange(2), torch.arange(2))
    with ranking.evaluation_device("meta"):  # any device other than the inputs' one
        chunked_ranks(torch.ones(2, 3), torch.ones(2, 3), torch.arange(2), torch.arange(2))
    assert seen == [{"cpu"}, {"meta"}]


def test_dataset_metric_has_no_per_batch_value_and_names_missing_fields():
    metric = FullRankingRetrieval()
    with pytest.raises(RuntimeError, match="fashionvil_trainer"):
        metric.calculate({}, {})
    with pytest.raises(ValueError, match="'text_embedding'"):
        metric.collect(SampleList({"id": torch.tensor([0]), "sample_index": torch.tensor([0])}),
                       {"image_embedding": torch.zeros(1, 2)})


def test_metrics_are_registered_and_take_params_through_rc10_metrics():
    from mmf.modules.metrics import Metrics

    for name, cls in [("fashionvil_retrieval", FullRankingRetrieval),
                      ("fashionvil_retrieval_sample100", SampledRetrieval),
                      ("fashionvil_tgir", TextGuidedImageRetrieval),
                      ("fashionvil_tgir_fashion200k", Fashion200kTextGuidedImageRetrieval),
                      ("fashionvil_ocir", OutfitComplementaryRetrieval),
                      ("fashionvil_accuracy", Accuracy),
                      ("fashionvil_macro_f1", MacroF1)]:
        assert registry.get_metric_class(name) is cls
    built = Metrics([{"type": "fashionvil_tgir", "params": {"gallery": "union"}}])
    assert built.metrics["fashionvil_tgir"].gallery == "union"
    assert {"composed_embedding", "image_id", "target_id"} <= built.required_params


# ----------------------------------------------------------------------------- XMR general
def xmr_catalog(seed, num_products=7, max_images=3, num_subcategories=2):
    generator = torch.Generator().manual_seed(seed)
    images_per_product = torch.randint(1, max_images + 1, (num_products,), generator=generator)
    product_texts = tie_prone_embeddings(num_products, generator)
    product_of_row = torch.repeat_interleave(torch.arange(num_products), images_per_product)
    rows = len(product_of_row)
    return {
        "sample": {
            "id": product_of_row,
            "sample_index": torch.randperm(rows, generator=generator) + 100,
            "subcategory": product_of_row % num_subcategories,
        },
        "model": {
            "image_embedding": tie_prone_embeddings(rows, generator),
            "text_embedding": product_texts[product_of_row],
        },
        "product_texts": product_texts,
    }


def brute_force_general(catalog):
    ids = catalog["sample"]["id"].tolist()
    images = catalog["model"]["image_embedding"]
    texts = {p: catalog["product_texts"][p] for p in set(ids)}
    itr = [brute_rank(images[i], texts, {ids[i]}) for i in range(len(ids))]
    image_candidates = {i: images[i] for i in range(len(ids))}
    tir = [brute_rank(texts[p], image_candidates, {i for i in range(len(ids)) if ids[i] == p})
           for p in texts]
    expected = {f"general/itr_r@{k}": percent_hits(itr, k) for k in (1, 5, 10)}
    expected.update({f"general/tir_r@{k}": percent_hits(tir, k) for k in (1, 5, 10)})
    expected["general/r_mean"] = sum(expected.values()) / 6
    return expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_ranking_matches_brute_force_and_is_order_free(seed):
    catalog = xmr_catalog(seed, num_products=12)
    metric = registry.get_metric_class("fashionvil_retrieval")()
    collected = collect_in_batches(metric, catalog["sample"], catalog["model"])
    result = metric.compute(collected)
    assert result == pytest.approx(brute_force_general(catalog))
    assert metric.compute(split_and_merge(collected, seed)) == pytest.approx(result)


def test_full_ranking_ties_are_pessimistic_and_any_image_counts():
    # Both products have the same text: every text query ties, so R@1 is 0, R@5 is 100.
    # Product 0 has two images; only the second one matches its text best.
    collected = {
        "image_embedding": torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]),
        "text_embedding": torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]),
        "id": torch.tensor([0, 0, 1]),
        "sample_index": torch.tensor([0, 1, 2]),
    }
    result = FullRankingRetrieval().compute(collected)
    assert result["general/itr_r@1"] == 0 and result["general/itr_r@5"] == 100
    assert result["general/tir_r@1"] == 0 and result["general/tir_r@5"] == 100
    # Distinct texts: product 0's text [0, 1] finds its first image at rank 0.
    collected["text_embedding"] = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    result = FullRankingRetrieval().compute(collected)
    assert result["general/tir_r@1"] == 50  # product 1's text ties with product 0's 2nd image
    # Product 0's second image [1, 0] prefers product 1's text: the other two are hits.
    assert result["general/itr_r@1"] == pytest.approx(200 / 3)


# ----------------------------------------------------------------------------- sample-100
def sample100(tmp_path, name, **params):
    settings = {"num_queries": 9, "num_negatives": 3, "num_draws": 2, "seed": 1,
                "draws_file": str(tmp_path / name)}
    settings.update(params)
    return registry.get_metric_class("fashionvil_retrieval_sample100")(**settings)


def sample100_collected(seed=3):
    catalog = xmr_catalog(seed, num_products=14, num_subcategories=3)
    # A subcategory with just two products: their queries take negatives from other ones.
    catalog["sample"]["subcategory"][catalog["sample"]["id"] >= 12] = 7
    return {**catalog["sample"], **catalog["model"]}


def brute_force_sample100(collected, draws, protocol="kaleido"):
    """R@1/5/10 over the saved draws, explicit loops: ITR ranks the candidates' texts for the
    query's image, TIR the candidates' images for the query's text; the first candidate is
    the positive."""
    row_of = {int(s): i for i, s in enumerate(collected["sample_index"])}
    images, texts = collected["image_embedding"], collected["text_embedding"]
    sides = {"itr": (images, texts), "tir": (texts, images)}
    totals = {}
    for draw in draws:
        values = {}
        for direction, (query_side, candidate_side) in sides.items():
            ranks = []
            for query, items in zip(draw[direction]["queries"], draw[direction]["candidates"]):
                rows = [row_of[s] for s in items]
                ranks.append(brute_rank(query_side[row_of[query]],
                                        {r: candidate_side[r] for r in rows}, {rows[0]}))
            values.update({f"{protocol}/{direction}_r@{k}": percent_hits(ranks, k)
                           for k in (1, 5, 10)})
        values[f"{protocol}/r_mean"] = sum(values.values()) / 6
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value / len(draws)
    return totals


def saved_draw_sets(path):
    """The draw sets of a draws file, a list of {"num_items", "draws"}."""
    return list(json.loads(path.read_text())["draw_sets"].values())


def test_sample100_draws_follow_the_authors_protocol_and_match_brute_force(tmp_path):
    collected = sample100_collected()
    result = sample100(tmp_path, "draws.json").compute(collected)
    (draw_set,) = saved_draw_sets(tmp_path / "draws.json")
    assert draw_set["num_items"] == len(collected["sample_index"])
    draws = draw_set["draws"]
    assert len(draws) == 2
    row_of = {int(s): i for i, s in enumerate(collected["sample_index"])}
    product = collected["id"].tolist()
    group = collected["subcategory"].tolist()
    # A product's text is named by its row with the smallest sample_index.
    text_item = {}
    for s in sorted(row_of):
        text_item.setdefault(product[row_of[s]], s)
    for draw in draws:
        # ITR: 9 distinct images; TIR: 9 distinct products' texts.
        assert len(set(draw["itr"]["queries"])) == len(draw["itr"]["queries"]) == 9
        tir_products = [product[row_of[s]] for s in draw["tir"]["queries"]]
        assert len(set(tir_products)) == 9
        assert set(draw["tir"]["queries"]) <= set(text_item.values())
        for direction in ("itr", "tir"):
            for query, items in zip(draw[direction]["queries"], draw[direction]["candidates"]):
                q, rows = row_of[query], [row_of[s] for s in items]
                assert product[rows[0]] == product[q]  # the positive comes first
                negatives = rows[1:]
                assert len(negatives) == len(set(negatives)) == 3
                assert all(product[r] != product[q] for r in negatives)
                if direction == "itr":  # texts: one per product
                    assert set(items) <= set(text_item.values())
                same_group = {r for r in range(len(product)) if group[r] == group[q]
                              and product[r] != product[q]
                              and (direction == "tir" or r == row_of[text_item[product[r]]])}
                if len(same_group) >= 3:
                    assert set(negatives) <= same_group
                else:  # all of the subcategory, the rest from other subcategories
                    assert same_group <= set(negatives)
    assert result == pytest.approx(brute_force_sample100(collected, draws))


def test_sample100_by_hand_every_query_against_every_other_product():
    # One subcategory, three products with one image each; 2 negatives = all the others, so
    # the draw is fixed. ITR ranks of images i0, i1, i2 against texts t0, t1, t2:
    #   i0=[1,0]: t0=1 beats t1=t2=0 -> 0; i1=[1,0]: t1=0, t0=1 and t2=0 tie or beat -> 2;
    #   i2=[0,1]: t2=1 ties t1=1 -> 1. TIR ranks, likewise: t0 -> 1 (i1 ties), t1 -> 2, t2 -> 0.
    collected = {"image_embedding": torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
                 "text_embedding": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]),
                 "id": torch.tensor([0, 1, 2]), "subcategory": torch.tensor([5, 5, 5]),
                 "sample_index": torch.tensor([0, 1, 2])}
    third = 100 / 3
    for num_queries, protocol in ((None, "kaleido_all_queries"), (1000, "kaleido")):
        # The authors' 1,000 random queries: all three of each direction here.
        metric = SampledRetrieval(num_queries=num_queries, num_negatives=2, num_draws=2,
                                  ks=(1, 2, 3))
        expected = {f"{protocol}/{d}_r@{k}": v for d in ("itr", "tir")
                    for k, v in ((1, third), (2, 2 * third), (3, 100.0))}
        expected[f"{protocol}/r_mean"] = 200 / 3
        assert metric.compute(collected) == pytest.approx(expected)


def test_sample100_tir_negatives_are_any_image_of_another_product():
    """TIR negatives are drawn among images, not products: with product 1 holding 9 images
    and product 2 one, product 0's single negative is product 2's image in ~1 draw of 10
    (1 of 2 if one product were drawn first, then one of its images)."""
    ids = torch.tensor([0] + [1] * 9 + [2])
    collected = {"image_embedding": torch.zeros(11, 2), "text_embedding": torch.zeros(11, 2),
                 "id": ids, "subcategory": torch.zeros(11, dtype=torch.long),
                 "sample_index": torch.arange(11)}
    metric = SampledRetrieval(num_queries=None, num_negatives=1, num_draws=400)
    draws = metric.make_draws(collected["sample_index"], ids, collected["subcategory"])
    negatives = [candidates[1] for draw in draws
                 for query, candidates in zip(draw["tir"]["queries"], draw["tir"]["candidates"])
                 if query == 0]
    assert len(negatives) == 400
    share_of_product_2 = sum(1 for s in negatives if s == 10) / len(negatives)
    assert 0.05 < share_of_product_2 < 0.16


def test_sample100_draws_are_seeded_saved_and_reused(tmp_path):
    collected = sample100_collected()
    first = sample100(tmp_path, "a.json").compute(collected)
    again = sample100(tmp_path, "b.json").compute(split_and_merge(collected))
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert again == pytest.approx(first)
    sample100(tmp_path, "c.json", seed=2).compute(collected)
    assert saved_draw_sets(tmp_path / "c.json") != saved_draw_sets(tmp_path / "a.json")

    # An existing file is what gets ranked: replace its draws by a hand-made one.
    saved = json.loads((tmp_path / "a.json").read_text())
    order = torch.argsort(collected["sample_index"])
    items = collected["sample_index"][order].tolist()
    products = collected["id"][order].tolist()
    text_of = {}
    for s, p in zip(items, products):
        text_of.setdefault(p, s)
    image, text = items[0], text_of[products[0]]
    # Another product's text row, also one of its images.
    other_item = text_of[next(p for p in text_of if p != products[0])]
    hand_made = [{"itr": {"queries": [image], "candidates": [[text, other_item]]},
                  "tir": {"queries": [text], "candidates": [[image, other_item]]}}] * 2
    (key,) = saved["draw_sets"]
    saved["draw_sets"][key]["draws"] = hand_made
    (tmp_path / "a.json").write_text(json.dumps(saved))
    reused = sample100(tmp_path, "a.json").compute(collected)
    assert reused == pytest.approx(brute_force_sample100(collected, hand_made))


def test_sample100_keeps_one_draw_set_per_evaluated_split(tmp_path):
    """A dev split and the test split evaluated into one draws file (run_type=train_test):
    each gets its own draws, and each is reused when its items come again."""
    collected = sample100_collected()
    other_split = {key: value[:10] for key, value in collected.items()}
    first = sample100(tmp_path, "draws.json").compute(collected)
    other = sample100(tmp_path, "draws.json").compute(other_split)
    sets = saved_draw_sets(tmp_path / "draws.json")
    assert sorted(s["num_items"] for s in sets) == [10, len(collected["sample_index"])]
    items_of_other = {int(s) for s in other_split["sample_index"]}
    (small,) = [s for s in sets if s["num_items"] == 10]
    for draw in small["draws"]:
        for direction in ("itr", "tir"):
            assert set(draw[direction]["queries"]) <= items_of_other
    assert other == pytest.approx(brute_force_sample100(other_split, small["draws"]))
    # Both sets are reused, in any order of the rows.
    assert sample100(tmp_path, "draws.json").compute(split_and_merge(collected)) == \
        pytest.approx(first)
    assert saved_draw_sets(tmp_path / "draws.json") == sets


def test_sample100_rejects_a_draws_file_made_otherwise(tmp_path):
    collected = sample100_collected()
    sample100(tmp_path, "draws.json").compute(collected)
    with pytest.raises(ValueError, match="draws.json was drawn with.*seed"):
        sample100(tmp_path, "draws.json", seed=9).compute(collected)
    original = (tmp_path / "draws.json").read_text()
    # A set edited to name items the split does not have.
    saved = json.loads(original)
    (key,) = saved["draw_sets"]
    saved["draw_sets"][key]["draws"][0]["itr"]["queries"][0] = 10**6
    (tmp_path / "draws.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="draws.json names items \\[1000000\\].*other data"):
        sample100(tmp_path, "draws.json").compute(collected)
    # A positive that is not the query's product.
    saved = json.loads(original)
    candidates = saved["draw_sets"][key]["draws"][0]["tir"]["candidates"][0]
    candidates[0], candidates[1] = candidates[1], candidates[0]
    (tmp_path / "draws.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="tir query .* not its product's positive"):
        sample100(tmp_path, "draws.json").compute(collected)
    # A file of the previous layout (one query list for both directions, no format).
    saved = json.loads(original)
    del saved["format"]
    (tmp_path / "draws.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="'format': None.*'format': 2.*delete the file"):
        sample100(tmp_path, "draws.json").compute(collected)
    (tmp_path / "draws.json").write_text(json.dumps({"draws": []}))
    with pytest.raises(ValueError, match="draws.json is not a draws file written by this"):
        sample100(tmp_path, "draws.json").compute(collected)


# ----------------------------------------------------------------------------- ITM re-ranking
def brute_reranked_rank(scores, positives, candidates, k, match):
    """Explicit loops: the candidates ordered by score with negatives first among ties, the
    first k of them re-ordered by ``match`` and put ahead of the others; rank = negatives
    at or above the best positive in that order (ties against the query)."""
    members = [c for c in range(len(scores)) if candidates[c]]
    ordered = sorted(members, key=lambda c: (-scores[c], c in positives))
    top = set(ordered[:k])

    def place(c):  # compared as tuples: every top-k member is ahead of every other
        return (1, match[c]) if c in top else (0, scores[c])

    best = max(place(c) for c in members if c in positives)
    return sum(1 for c in members if c not in positives and place(c) >= best)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 3, 5, 40])
def test_rerank_top_k_matches_brute_force_with_ties_and_masked_candidates(seed, k):
    generator = torch.Generator().manual_seed(seed)
    queries, width = 12, 9
    scores = torch.randint(0, 4, (queries, width), generator=generator).float()
    match = torch.randint(0, 3, (queries, width), generator=generator).float()
    positive = torch.rand(queries, width, generator=generator) < 0.25
    candidate = torch.rand(queries, width, generator=generator) < 0.8
    positive[:, 0] = candidate[:, 0] = True  # every query has a positive candidate
    calls = []

    def pair_scores(q, c):
        calls.append((q.clone(), c.clone()))
        return match[q, c]

    reranked = rerank_top_k(scores, positive, candidate, k, pair_scores)
    ranks = positive_ranks(reranked, positive, candidate)
    for q in range(queries):
        expected = brute_reranked_rank(scores[q].tolist(), set(positive[q].nonzero().flatten().tolist()),
                                       candidate[q].tolist(), k, match[q].tolist())
        assert int(ranks[q]) == expected, q
    # Only candidates were scored, at most k per query, each pair once.
    (q, c), = calls
    assert bool(candidate[q, c].all())
    assert torch.bincount(q, minlength=queries).max() <= k
    assert len(set(zip(q.tolist(), c.tolist()))) == len(q)


def test_rerank_keeps_recall_from_k_on_and_a_constant_model_at_zero():
    generator = torch.Generator().manual_seed(5)
    scores = torch.randint(0, 3, (30, 12), generator=generator).float()
    positive = torch.zeros(30, 12, dtype=torch.bool)
    positive[torch.arange(30), torch.randint(0, 12, (30,), generator=generator)] = True
    candidate = torch.ones_like(positive)
    noise = torch.rand(30, 12, generator=generator)
    before = positive_ranks(scores, positive, candidate)
    after = positive_ranks(
        rerank_top_k(scores, positive, candidate, 4, lambda q, c: noise[q, c]),
        positive, candidate)
    for k in (4, 5, 12):
        assert recall_at_k(after, [k]) == recall_at_k(before, [k])
    # Everything tied (a constant model): no hit, before or after re-ranking.
    flat = rerank_top_k(torch.zeros(30, 12), positive, candidate, 4,
                        lambda q, c: torch.zeros(len(q)))
    assert recall_at_k(positive_ranks(flat, positive, candidate), [1, 4, 11]) == {
        1: 0.0, 4: 0.0, 11: 0.0}


class OracleITM(torch.nn.Module):
    """ITM stand-in: a (text, image) pair matches when the text's first token equals the
    image's first visual feature (both hold the product id in the tests' data)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the scorer a device

    def itm_match_scores(self, input_ids, input_mask, visual_tokens):
        assert not torch.is_grad_enabled() and not self.training
        return (input_ids[:, 0].float() == visual_tokens[:, 0, 0]).float()


def with_itm_inputs(catalog):
    """xmr_catalog rows plus the fields ITM re-ranking collects, product id in each."""
    product = catalog["sample"]["id"]
    input_ids = torch.zeros(len(product), 4, dtype=torch.long)
    input_ids[:, 0] = product
    visual_tokens = torch.randn(len(product), 2, 3)
    visual_tokens[:, 0, 0] = product.float()
    sample = {**catalog["sample"], "input_ids": input_ids, "input_mask": torch.ones_like(input_ids)}
    return sample, {**catalog["model"], "visual_tokens": visual_tokens}


@pytest.mark.parametrize("seed", [0, 1])
def test_full_ranking_oracle_itm_brings_every_top_k_positive_to_first(seed):
    sample, outputs = with_itm_inputs(xmr_catalog(seed, num_products=12))
    metric = registry.get_metric_class("fashionvil_retrieval")(ks=(1, 3, 10), itm_rerank_top_k=3)
    assert metric.needs_model
    collected = split_and_merge(collect_in_batches(metric, sample, outputs), seed)
    result = metric.compute(collected, model=OracleITM())
    for direction in ("itr", "tir"):
        # The oracle puts a positive first whenever one is among the top 3 ...
        assert result[f"general_itm_top3/{direction}_r@1"] == result[f"general/{direction}_r@3"]
        # ... and re-ranking inside the top 3 changes nothing from R@3 on.
        for k in (3, 10):
            assert result[f"general_itm_top3/{direction}_r@{k}"] == result[f"general/{direction}_r@{k}"]
    plain = registry.get_metric_class("fashionvil_retrieval")(ks=(1, 3, 10))
    assert {k: v for k, v in result.items() if k.startswith("general/")} == pytest.approx(
        plain.compute({k: collected[k] for k in plain.required_params}))
    # Not an identity: the top-3 positives were not all first before.
    assert result["general/itr_r@1"] < result["general/itr_r@3"]


def test_sample100_oracle_itm_brings_every_top_k_positive_to_first(tmp_path):
    sample, outputs = with_itm_inputs(xmr_catalog(0, num_products=14, num_subcategories=3))
    metric = sample100(tmp_path, "draws.json", ks=(1, 2, 5), itm_rerank_top_k=2)
    result = metric.compute({**sample, **outputs}, model=OracleITM())
    for direction in ("itr", "tir"):
        assert result[f"kaleido_itm_top2/{direction}_r@1"] == pytest.approx(
            result[f"kaleido/{direction}_r@2"])
        assert result[f"kaleido_itm_top2/{direction}_r@5"] == pytest.approx(
            result[f"kaleido/{direction}_r@5"])
    assert result["kaleido/itr_r@1"] < result["kaleido/itr_r@2"]


def test_itm_reranking_needs_the_model_its_fields_and_a_valid_k(tmp_path):
    metric = FullRankingRetrieval(itm_rerank_top_k=2)
    assert {"visual_tokens", "input_ids", "input_mask"} <= set(metric.required_params)
    assert not FullRankingRetrieval().needs_model
    sample, outputs = with_itm_inputs(xmr_catalog(0))
    with pytest.raises(ValueError, match="fashionvil_retrieval re-ranks with ITM and needs the model"):
        metric.compute({**sample, **outputs})
    with pytest.raises(ValueError, match="lacks.*visual_tokens"):
        metric.compute({**sample, **{k: v for k, v in outputs.items() if k != "visual_tokens"}},
                       model=OracleITM())
    with pytest.raises(ValueError, match="itm_rerank_top_k must be >= 0"):
        sample100(tmp_path, "d.json", itm_rerank_top_k=-1)


# ----------------------------------------------------------------------------- TGIR
def tgir_data(seed, categories=3, gallery_per_category=6, queries_per_category=5,
              match_groups=None):
    """Gallery rows (with one duplicated image) and query rows (reference and target from
    the gallery of the query's category)."""
    generator = torch.Generator().manual_seed(seed)
    sample = {"is_query": [], "image_id": [], "target_id": [], "category": []}
    gallery_ids = {}
    for category in range(categories):
        ids = list(range(category * 100, category * 100 + gallery_per_category))
        gallery_ids[category] = ids
        for image in ids + ids[:1]:  # the first image is emitted twice
            sample["is_query"].append(False)
            sample["image_id"].append(image)
            sample["target_id"].append(-1)
            sample["category"].append(category)
    for category in range(categories):
        ids = gallery_ids[category]
        for _ in range(queries_per_category):
            reference, target = torch.randperm(len(ids), generator=generator)[:2].tolist()
            sample["is_query"].append(True)
            sample["image_id"].append(ids[reference])
            sample["target_id"].append(ids[target])
            sample["category"].append(category)
    sample = {key: torch.tensor(value) for key, value in sample.items()}
    rows = len(sample["is_query"])
    image_vectors = {i: tie_prone_embeddings(1, generator)[0]
                     for i in set(sample["image_id"].tolist())}
    model = {
        "composed_embedding": tie_prone_embeddings(rows, generator),
        "image_embedding": torch.stack([image_vectors[i] for i in sample["image_id"].tolist()]),
    }
    sample["sample_index"] = torch.randperm(rows, generator=generator)
    if match_groups is not None:
        sample["match_id"] = sample["image_id"] % match_groups
        sample["target_id"] = torch.where(sample["is_query"], sample["target_id"] % match_groups,
                                          sample["target_id"])
    return sample, model, image_vectors


def brute_force_tgir(sample, model, image_vectors, gallery, ks, names):
    is_query = sample["is_query"].tolist()
    ids, targets, categories = (sample[k].tolist() for k in ("image_id", "target_id", "category"))
    match_of = {}
    for row in range(len(ids)):
        if not is_query[row]:
            match_of[ids[row]] = (sample["match_id"][row].item() if "match_id" in sample
                                  else ids[row])
    per_category = {}
    for row in range(len(ids)):
        if not is_query[row]:
            continue
        category = categories[row]
        if gallery == "all":
            pool = {ids[r] for r in range(len(ids)) if not is_query[r]}
        else:
            pool = {ids[r] for r in range(len(ids))
                    if not is_query[r] and categories[r] == category}
        if gallery == "union":
            wanted = set()
            for r in range(len(ids)):
                if is_query[r] and categories[r] == category:
                    wanted |= {ids[r], targets[r]}
            pool &= wanted
        positives = {i for i in pool if match_of[i] == targets[row]}
        pool = {i for i in pool if i != ids[row] or i in positives}  # reference left out
        rank = brute_rank(model["composed_embedding"][row],
                          {i: image_vectors[i] for i in pool}, positives)
        per_category.setdefault("all" if gallery == "all" else names[category], []).append(rank)
    if gallery == "all":
        values = {f"all/r@{k}": percent_hits(per_category["all"], k) for k in ks}
        values["all/r_mean"] = sum(values.values()) / len(ks)
        return values
    values = {}
    for name, ranks in per_category.items():
        for k in ks:
            values[f"{gallery}/{name}/r@{k}"] = percent_hits(ranks, k)
    for k in ks:
        values[f"{gallery}/mean/r@{k}"] = sum(
            values[f"{gallery}/{name}/r@{k}"] for name in per_category) / len(per_category)
    values[f"{gallery}/r_mean"] = sum(values[f"{gallery}/mean/r@{k}"] for k in ks) / len(ks)
    return values


@pytest.mark.parametrize("gallery", ["original", "union"])
@pytest.mark.parametrize("seed", [0, 1])
def test_tgir_fashioniq_matches_brute_force(gallery, seed):
    sample, model, image_vectors = tgir_data(seed)
    metric = TextGuidedImageRetrieval(gallery=gallery, ks=(1, 3))
    collected = collect_in_batches(metric, sample, model)
    result = metric.compute(collected)
    names = ["dress", "shirt", "toptee"]
    assert result == pytest.approx(brute_force_tgir(sample, model, image_vectors, gallery,
                                                    (1, 3), names))
    assert metric.compute(split_and_merge(collected, seed)) == pytest.approx(result)


def test_tgir_union_gallery_holds_only_references_and_targets():
    sample, model, _ = tgir_data(4, queries_per_category=1, gallery_per_category=40)
    # With one query per category, the union gallery holds just its reference and target.
    collected = TextGuidedImageRetrieval().collect(SampleList(sample), model)
    union = TextGuidedImageRetrieval(gallery="union", ks=(1,)).compute(collected)
    assert all(union[f"union/{name}/r@1"] == 100 for name in ("dress", "shirt", "toptee"))


def test_tgir_excludes_the_reference_image():
    # The composed query equals the reference image (a model that ignores the text): it
    # would be ranked first; excluded, the target comes first.
    sample = {"is_query": torch.tensor([False, False, False, True]),
              "image_id": torch.tensor([10, 11, 12, 10]),
              "target_id": torch.tensor([-1, -1, -1, 11]),
              "category": torch.tensor([0, 0, 0, 0]),
              "sample_index": torch.arange(4)}
    model = {"image_embedding": torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]),
             "composed_embedding": torch.tensor([[0.0, 0.0]] * 3 + [[1.0, 0.0]])}
    metric = TextGuidedImageRetrieval(ks=(1,))
    result = metric.compute(metric.collect(SampleList(sample), model))
    assert result["original/dress/r@1"] == 100


def test_tgir_target_missing_from_gallery_is_an_error():
    sample, model, _ = tgir_data(0)
    sample["target_id"][-1] = 999
    metric = TextGuidedImageRetrieval()
    with pytest.raises(ValueError, match="toptee.*not in its gallery"):
        metric.compute(metric.collect(SampleList(sample), model))


def test_tgir_fashion200k_matches_brute_force_with_description_matches():
    sample, model, image_vectors = tgir_data(2, categories=2, match_groups=4)
    metric = registry.get_metric_class("fashionvil_tgir_fashion200k")()
    collected = collect_in_batches(metric, sample, model)
    assert "match_id" in collected
    expected = brute_force_tgir(sample, model, image_vectors, "all", (1, 10, 50), None)
    assert metric.compute(collected) == pytest.approx(expected)
    assert metric.compute(split_and_merge(collected)) == pytest.approx(expected)


# ----------------------------------------------------------------------------- OCIR
def ocir_data(seed, categories=3, items_per_category=8, queries=12):
    generator = torch.Generator().manual_seed(seed)
    sample = {"is_query": [], "item_id": [], "target_id": [], "category": []}
    for category in range(categories):
        for item in range(items_per_category):
            sample["is_query"].append(False)
            sample["item_id"].append(category * 1000 + item)
            sample["target_id"].append(-1)
            sample["category"].append(category)
    for _ in range(queries):
        # Unequal category frequencies: category 0 twice as likely.
        category = [0, 0, 1, 2][int(torch.randint(4, (1,), generator=generator))]
        blank = category * 1000 + int(torch.randint(items_per_category, (1,), generator=generator))
        sample["is_query"].append(True)
        sample["item_id"].append(-1)
        sample["target_id"].append(blank)
        sample["category"].append(category)
    sample = {key: torch.tensor(value) for key, value in sample.items()}
    rows = len(sample["is_query"])
    sample["sample_index"] = torch.randperm(rows, generator=generator)
    model = {"outfit_embedding": tie_prone_embeddings(rows, generator),
             "item_embedding": tie_prone_embeddings(rows, generator)}
    return sample, model


def test_ocir_matches_brute_force_in_both_conventions():
    sample, model = ocir_data(0)
    ks = (1, 3, 5)
    metric = OutfitComplementaryRetrieval(ks=ks, categories=["top", "bottom", "shoes"])
    collected = collect_in_batches(metric, sample, model)
    result = metric.compute(collected)

    is_query, items = sample["is_query"].tolist(), sample["item_id"].tolist()
    categories, targets = sample["category"].tolist(), sample["target_id"].tolist()
    blanks = {targets[row] for row in range(len(items)) if is_query[row]}
    assert len(blanks) < sum(1 for q in is_query if not q)  # the two galleries differ
    ranks = {"blank_items": {}, "all_items": {}}
    for row in range(len(items)):
        if is_query[row]:
            pool = {items[r]: model["item_embedding"][r] for r in range(len(items))
                    if not is_query[r] and categories[r] == categories[row]}
            for gallery, candidates in (
                    ("all_items", pool),
                    ("blank_items", {i: v for i, v in pool.items() if i in blanks})):
                ranks[gallery].setdefault(categories[row], []).append(
                    brute_rank(model["outfit_embedding"][row], candidates, {targets[row]}))
    names = ["top", "bottom", "shoes"]
    for k in ks:
        for gallery in ranks:
            for category, category_ranks in ranks[gallery].items():
                assert result[f"{gallery}/{names[category]}/r@{k}"] == pytest.approx(
                    percent_hits(category_ranks, k))
        # The authors' headline: the plain mean of the per-category recalls.
        per_category = [percent_hits(r, k) for r in ranks["blank_items"].values()]
        assert result[f"blank_items/mean/r@{k}"] == pytest.approx(
            sum(per_category) / len(per_category))
        # Weighting by the number of queries makes it the recall over all queries.
        all_ranks = [r for category_ranks in ranks["all_items"].values() for r in category_ranks]
        assert result[f"all_items/weighted/r@{k}"] == pytest.approx(percent_hits(all_ranks, k))
    assert metric.compute(split_and_merge(collected)) == pytest.approx(result)


def test_ocir_conventions_by_hand():
    """Category 0: items 0=[1,0], 1=[0,1], both blanks; three queries, all hits.
    Category 1: items 10=[1,0] and 12=[-1,0] are blanks, 11=[0,1] only a question item.
    Query (target 10, outfit [1,2]) scores 10 -> 1, 11 -> 2, 12 -> -1: a hit among the
    blanks, a miss among all items. Query (target 12, outfit [1,0]): 10 -> 1 beats 12 -> -1,
    a miss in both. R@1, authors': (100 + 50) / 2 = 75 (the mean over the 5 queries would
    be 80); all items weighted by queries: (3 * 100 + 2 * 0) / 5 = 60."""
    item_ids = [0, 1, 10, 11, 12]
    items = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
    queries = [(0, 0, [1.0, 0.0]), (0, 1, [0.0, 1.0]), (0, 0, [1.0, 0.0]),
               (1, 10, [1.0, 2.0]), (1, 12, [1.0, 0.0])]  # (category, blank, outfit)
    sample = {"is_query": torch.tensor([False] * 5 + [True] * 5),
              "item_id": torch.tensor(item_ids + [-1] * 5),
              "target_id": torch.tensor([-1] * 5 + [blank for _, blank, _ in queries]),
              "category": torch.tensor([0, 0, 1, 1, 1] + [c for c, _, _ in queries]),
              "sample_index": torch.arange(10)}
    outfits = torch.tensor([[0.0, 0.0]] * 5 + [outfit for _, _, outfit in queries])
    metric = OutfitComplementaryRetrieval(ks=(1,))
    result = metric.compute(metric.collect(SampleList(sample), {
        "outfit_embedding": outfits, "item_embedding": torch.tensor(items + [[0.0, 0.0]] * 5)}))
    assert result == pytest.approx({
        "blank_items/0/r@1": 100.0, "blank_items/1/r@1": 50.0, "blank_items/mean/r@1": 75.0,
        "blank_items/r_mean": 75.0,
        "all_items/0/r@1": 100.0, "all_items/1/r@1": 0.0, "all_items/weighted/r@1": 60.0,
        "all_items/r_mean": 60.0})


# ----------------------------------------------------------------------------- SCR
def classification_collected(predictions, targets, num_classes):
    scores = torch.nn.functional.one_hot(torch.tensor(predictions), num_classes).float()
    sample = SampleList({"targets": torch.tensor(targets)})
    return Accuracy().collect(sample, {"scores": scores})


def test_accuracy_and_macro_f1_by_hand():
    collected = classification_collected([0, 1, 1, 1, 3], [0, 0, 1, 1, 2], 4)
    assert Accuracy().compute(collected) == {"accuracy": pytest.approx(60.0)}
    f1_class0, f1_class1, f1_class2, f1_class3 = 2 / 3, 4 / 5, 0.0, 0.0  # 2TP / (2TP + FP + FN)
    # The authors' (sklearn's) convention: class 3, predicted but never true, counts with 0.
    # The target-classes mean leaves it out.
    assert MacroF1().compute(collected) == pytest.approx({
        "macro_f1": 100 * (f1_class0 + f1_class1 + f1_class2 + f1_class3) / 4,
        "macro_f1_target_classes": 100 * (f1_class0 + f1_class1 + f1_class2) / 3})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macro_f1_matches_sklearn_in_both_conventions(seed):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 6, 40)
    predictions = np.where(rng.random(40) < 0.6, targets, rng.integers(0, 8, 40))
    assert set(predictions) - set(targets)  # some classes are only predicted
    collected = classification_collected(predictions.tolist(), targets.tolist(), 8)
    expected = {
        "macro_f1": 100 * f1_score(targets, predictions, average="macro", zero_division=0),
        "macro_f1_target_classes": 100 * f1_score(
            targets, predictions, labels=np.unique(targets), average="macro", zero_division=0)}
    assert expected["macro_f1"] < expected["macro_f1_target_classes"]
    assert MacroF1().compute(collected) == pytest.approx(expected)
    merged = split_and_merge({**collected, "sample_index": torch.arange(40)})
    del merged["sample_index"]
    assert MacroF1().compute(merged) == pytest.approx(expected)


def test_classification_collect_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"scores \[B, C\]"):
        Accuracy().collect(SampleList({"targets": torch.zeros(2, 3)}),
                           {"scores": torch.zeros(2, 3)})
