"""Masking and negative sampling for FashionViL pre-training (SPEC §2, §9).

Pure functions: every random draw comes from the ``torch.Generator`` passed in, so a
dataset that seeds the generator from (seed, epoch, index) reproduces its masks exactly.

- :func:`whole_word_mask` — MLM whole-word masking (words = a token plus its ``##`` pieces).
- :func:`block_patch_mask` — BEiT-style block-wise masking of the visual grid (MPFC), with an
  exact number of masked patches.
- :func:`hard_negative_indices` — ITM hard negatives sampled from a similarity matrix.
"""
import math
from typing import Optional, Sequence, Tuple

import torch

IGNORE_INDEX = -100  # label of positions the MLM loss skips (PyTorch cross-entropy default)


def _random_non_special_ids(
    count: int, vocab_size: int, special_ids: Sequence[int], generator: torch.Generator
) -> torch.Tensor:
    """`count` ids drawn uniformly from [0, vocab_size) minus `special_ids`."""
    specials = sorted({int(s) for s in special_ids if 0 <= int(s) < vocab_size})
    allowed = vocab_size - len(specials)
    if allowed <= 0:
        raise ValueError(f"vocab_size={vocab_size} leaves no non-special token to sample")
    ids = torch.randint(allowed, (count,), generator=generator)
    # Map a draw from the compressed range onto the vocabulary by skipping each special id
    # at or below it (specials in increasing order, so earlier skips shift later ones).
    for special in specials:
        ids = ids + (ids >= special).long()
    return ids


def whole_word_mask(
    input_ids: torch.Tensor,
    word_ids: torch.Tensor,
    generator: torch.Generator,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    mask_prob: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT whole-word masking of one tokenised text.

    Args:
        input_ids: LongTensor [L], e.g. ``[CLS] w1..wn [SEP] [PAD]...``.
        word_ids: LongTensor [L], the word each position belongs to; -1 for positions that are
            no word (special tokens, padding). A word is a token plus its following ``##``
            pieces: a fast BERT tokenizer's ``encoding.word_ids()`` with None -> -1.
        generator: source of all random draws.
        mask_token_id, vocab_size: of the tokenizer.
        special_ids: ids never chosen for masking and never drawn as random replacements.
        mask_prob: probability that each word is chosen (independently); when a text has at
            least one word and none was drawn, one word is chosen uniformly so every text
            gives the MLM loss something to predict.
        mask_fraction, random_fraction: of chosen words, the share whose pieces all become
            [MASK], and the share whose pieces become random tokens; the rest stay unchanged.
            Decided per word.

    Returns:
        ``(masked_input_ids, labels)``, both LongTensor [L]; labels hold the original id on
        every piece of a chosen word and -100 elsewhere.
    """
    if input_ids.dim() != 1 or word_ids.shape != input_ids.shape:
        raise ValueError(
            "whole_word_mask expects 1-D input_ids and word_ids of the same length, got "
            f"{tuple(input_ids.shape)} and {tuple(word_ids.shape)}"
        )
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must lie in [0, 1], got {mask_prob}")
    if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1:
        raise ValueError(
            "mask_fraction and random_fraction must be >= 0 and sum to at most 1, got "
            f"{mask_fraction} and {random_fraction}"
        )
    input_ids = input_ids.long()
    word_ids = word_ids.to(input_ids.device).long()
    special = torch.tensor(list(special_ids), dtype=torch.long, device=input_ids.device)
    eligible = (word_ids >= 0) & ~torch.isin(input_ids, special)

    masked_input_ids = input_ids.clone()
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    words = torch.unique(word_ids[eligible])  # sorted, so draws follow word order
    if words.numel() == 0:
        return masked_input_ids, labels

    chosen = torch.rand(words.numel(), generator=generator) < mask_prob
    if not chosen.any():
        chosen[torch.randint(words.numel(), (1,), generator=generator)] = True
    action = torch.rand(words.numel(), generator=generator)
    to_mask_token = chosen & (action < mask_fraction)
    to_random = chosen & (action >= mask_fraction) & (action < mask_fraction + random_fraction)

    def positions_of(word_selection: torch.Tensor) -> torch.Tensor:
        selected_words = words[word_selection.to(words.device)]
        return eligible & torch.isin(word_ids, selected_words)

    chosen_positions = positions_of(chosen)
    labels[chosen_positions] = input_ids[chosen_positions]
    masked_input_ids[positions_of(to_mask_token)] = mask_token_id
    random_positions = positions_of(to_random)
    num_random = int(random_positions.sum())
    if num_random:
        replacements = _random_non_special_ids(num_random, vocab_size, special_ids, generator)
        masked_input_ids[random_positions] = replacements.to(input_ids.device)
    return masked_input_ids, labels


def num_masked_patches(num_patches: int, mask_ratio: float) -> int:
    """round(mask_ratio * num_patches), halves rounded up (7x7 at 0.25 -> 12, 7x7 at 0.5 -> 25)."""
    return int(math.floor(mask_ratio * num_patches + 0.5))


def block_patch_mask(
    grid_h: int,
    grid_w: int,
    generator: torch.Generator,
    mask_ratio: float = 0.25,
    min_block: int = 4,
    max_aspect: float = 1 / 0.3,
    num_masks: Optional[int] = None,
) -> torch.Tensor:
    """BEiT-style block-wise mask over a grid of patches, masking exactly
    :func:`num_masked_patches` patches.

    Rectangular blocks are placed until the target count is reached. Each block has an area
    drawn uniformly from [min(min_block, remaining), remaining] and an aspect ratio drawn
    log-uniformly from [1/max_aspect, max_aspect], clipped to the grid. Unlike BEiT's
    generator, which gives up after failed placements (8 of 49 patches with its defaults,
    SPEC §9), every block is placed over a random still-unmasked patch so each step makes
    progress, and the last block is trimmed (keeping its first new patches in row-major order)
    when it would overshoot.

    All ``num_masks`` masks are drawn at once with tensor operations on the generator's
    device and no value read back to the host (a training step must not wait for the GPU):
    every placement adds at least one patch, so ``target`` rounds of placements always
    finish every mask; rounds of a finished mask change nothing.

    Returns:
        BoolTensor [grid_h * grid_w] (``num_masks`` None) or [num_masks, grid_h * grid_w],
        row-major, True = masked, on the generator's device.
    """
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"grid must be at least 1x1, got {grid_h}x{grid_w}")
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1], got {mask_ratio}")
    if min_block < 1:
        raise ValueError(f"min_block must be >= 1, got {min_block}")
    if max_aspect < 1.0:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")

    count = 1 if num_masks is None else int(num_masks)
    device = generator.device
    num_patches = grid_h * grid_w
    target = num_masked_patches(num_patches, mask_ratio)
    rows = torch.arange(num_patches, device=device) // grid_w  # of each patch, [N]
    columns = torch.arange(num_patches, device=device) % grid_w
    mask = torch.zeros(count, num_patches, dtype=torch.bool, device=device)
    log_aspect_bound = math.log(max_aspect)

    def uniform(low, high):
        return low + (high - low) * torch.rand(count, generator=generator, device=device)

    def randint_inclusive(low, high):
        # floor(low + U * (high - low + 1)), U in [0, 1): uniform over low..high
        span = (high - low + 1).to(torch.float64)
        draw = torch.rand(count, generator=generator, device=device, dtype=torch.float64)
        return low + torch.minimum((draw * span).long(), (high - low))

    for _ in range(target):
        remaining = target - mask.sum(1)  # [count]; 0 once a mask is complete
        area = uniform(remaining.clamp(max=min_block).double(), remaining.double())
        aspect = torch.exp(uniform(-log_aspect_bound, log_aspect_bound).double())
        height = torch.round(torch.sqrt(area * aspect)).long().clamp(1, grid_h)
        width = torch.round(torch.sqrt(area / aspect)).long().clamp(1, grid_w)

        # A random still-unmasked patch (the largest random score among them).
        scores = torch.rand(count, num_patches, generator=generator, device=device)
        anchor = scores.masked_fill(mask, -1.0).argmax(1)
        anchor_row, anchor_col = anchor // grid_w, anchor % grid_w
        top = randint_inclusive((anchor_row - height + 1).clamp(min=0),
                                torch.minimum(anchor_row, grid_h - height))
        left = randint_inclusive((anchor_col - width + 1).clamp(min=0),
                                 torch.minimum(anchor_col, grid_w - width))

        in_block = ((rows >= top[:, None]) & (rows < (top + height)[:, None])
                    & (columns >= left[:, None]) & (columns < (left + width)[:, None]))
        new = in_block & ~mask
        # Block cells are visited row by row, which is the grid's row-major order.
        new &= new.cumsum(1) <= remaining[:, None]
        mask |= new
    return mask[0] if num_masks is None else mask


def hard_negative_indices(
    similarity: torch.Tensor,
    positive_index: torch.Tensor,
    row_product_ids: torch.Tensor,
    column_product_ids: torch.Tensor,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """For each row, sample a negative column with probability softmax(similarity[row])
    restricted to the valid columns: not the row's positive and not of the row's product.

    Rows are the queries (images for image->text negatives); for text rows pass a
    texts x images matrix (e.g. the transposed one) with the ids swapped accordingly.
    Excluded entries get -inf (SPEC §9: never a finite stand-in such as -1).

    Args:
        similarity: [B, C] scores of each row against every (globally gathered) column.
        positive_index: LongTensor [B], the column of each row's positive.
        row_product_ids: [B]; column_product_ids: [C].
        generator: draws the samples (None: the device's global RNG); when its device
            differs from the similarity's, the noise is drawn there and moved.

    Returns:
        LongTensor [B] of column indices, on the similarity's device.
    """
    if similarity.dim() != 2:
        raise ValueError(f"similarity must be [rows, columns], got {tuple(similarity.shape)}")
    num_rows, num_columns = similarity.shape
    if positive_index.shape != (num_rows,) or row_product_ids.shape != (num_rows,):
        raise ValueError(
            f"positive_index and row_product_ids must have shape ({num_rows},), got "
            f"{tuple(positive_index.shape)} and {tuple(row_product_ids.shape)}"
        )
    if column_product_ids.shape != (num_columns,):
        raise ValueError(
            f"column_product_ids must have shape ({num_columns},), got "
            f"{tuple(column_product_ids.shape)}"
        )
    device = similarity.device
    # Checked on the device (torch._assert_async): a training step never waits for the GPU
    # to read a flag back; on a GPU a failed check stops the run at the next synchronisation.
    with torch.no_grad():
        scores = similarity.detach().float()
        torch._assert_async(torch.isfinite(scores).all(),
                            "hard_negative_indices: similarity contains NaN or infinite values")
        excluded = row_product_ids.to(device)[:, None] == column_product_ids.to(device)[None, :]
        excluded = excluded | (torch.arange(num_columns, device=device)[None, :]
                               == positive_index.to(device)[:, None])
        torch._assert_async(
            (~excluded).any(dim=1).all(),
            "hard_negative_indices: a row has no valid hard negative (every column is the "
            "positive or the same product); the batch needs at least one other product per row",
        )
        # Gumbel-max: argmax(scores + Gumbel noise) is a draw from softmax(scores); excluded
        # columns stay -inf.
        noise_device = generator.device if generator is not None else device
        uniform = torch.rand(num_rows, num_columns, generator=generator, device=noise_device)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20).to(device)))
        choice = (scores.masked_fill(excluded, float("-inf")) + gumbel).argmax(dim=1)
    return choice
