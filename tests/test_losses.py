import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from mmf.common.registry import registry
from mmf.common.sample import SampleList
from mmf.modules.losses import MMFLoss
from mmf_fashionvil.modeling import losses
from mmf_fashionvil.modeling.losses import (
    contrastive_loss,
    drop_skipped,
    masked_cross_entropy,
    soft_label_cross_entropy,
)
from helpers import free_port


def nll(logit_row, target):
    """-log softmax(logit_row)[target] with math only."""
    return -logit_row[target] + math.log(sum(math.exp(v) for v in logit_row))


def reference_info_nce(a, b, symmetric=True):
    """InfoNCE written as explicit per-row logsumexp terms (differentiable)."""
    terms = []
    for i in range(len(a)):
        a_to_b = torch.logsumexp(b @ a[i], 0) - a[i] @ b[i]
        if symmetric:
            b_to_a = torch.logsumexp(a @ b[i], 0) - b[i] @ a[i]
            terms.append((a_to_b + b_to_a) / 2)
        else:
            terms.append(a_to_b)
    return torch.stack(terms).mean()


def run_loss(name, model_output, sample_list=None, **params):
    loss = registry.get_loss_class(name)(**params)
    return loss(sample_list if sample_list is not None else {"dataset_type": "train"},
                model_output)


# ----------------------------------------------------------------------------- InfoNCE
def test_contrastive_loss_on_two_by_two_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    # a @ b.T = [[2, 1], [0, 1]];  b @ a.T = [[2, 0], [1, 1]]
    a_to_b = (nll([2, 1], 0) + nll([0, 1], 1)) / 2
    b_to_a = (nll([2, 0], 0) + nll([1, 1], 1)) / 2
    assert contrastive_loss(a, b).item() == pytest.approx((a_to_b + b_to_a) / 2, rel=1e-6)
    assert contrastive_loss(a, b, symmetric=False).item() == pytest.approx(a_to_b, rel=1e-6)


def test_contrastive_loss_matches_reference_with_gradients():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, generator=generator, requires_grad=True)
    b = torch.randn(6, 4, generator=generator, requires_grad=True)
    ours = contrastive_loss(a, b)
    ours_grads = torch.autograd.grad(ours, (a, b))
    expected = reference_info_nce(a, b)
    expected_grads = torch.autograd.grad(expected, (a, b))
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
    for got, want in zip(ours_grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_contrastive_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss(torch.zeros(3, 4), torch.zeros(2, 4))


@pytest.mark.parametrize("name, first, second, symmetric", [
    ("fashionvil_itc", "image_embedding", "text_embedding", True),
    ("fashionvil_mvc", "composed_embedding", "view_embedding", True),
    ("fashionvil_tgir", "composed_embedding", "target_embedding", False),
    ("fashionvil_ocir", "outfit_embedding", "item_embedding", False),
])
def test_contrastive_task_losses(name, first, second, symmetric):
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    value = run_loss(name, {first: a, second: b})
    assert value.item() == pytest.approx(reference_info_nce(a, b, symmetric).item(), rel=1e-5)
    # The other direction as well when symmetric; only query -> target otherwise.
    swapped = run_loss(name, {first: b, second: a})
    assert (abs(swapped.item() - value.item()) < 1e-5) == symmetric
    # Absent inputs (another task ran this step): skipped.
    assert run_loss(name, {first: a}).numel() == 0
    # Query/gallery evaluation rows (is_query) are not pairs: skipped.
    rows = {"dataset_type": "val", "is_query": torch.tensor([1, 1, 0, 0, 0])}
    assert run_loss(name, {first: a, second: b}, rows).numel() == 0
    training_rows = {"dataset_type": "train", "is_query": torch.zeros(5, dtype=torch.bool)}
    assert run_loss(name, {first: a, second: b}, training_rows).item() == pytest.approx(
        value.item())


# ----------------------------------------------------------------------------- skip marker
def test_skipped_loss_passes_through_mmf_loss_and_is_dropped():
    itm = MMFLoss({"type": "fashionvil_itm"})
    mlm = MMFLoss("fashionvil_mlm")
    sample_list = SampleList({"targets": torch.tensor([0]), "dataset_type": "train",
                              "dataset_name": "fashiongen"})
    model_output = {"itm_logits": torch.tensor([[0.0, 1.0]]), "itm_labels": torch.tensor([1])}
    reported = {**itm(sample_list, model_output), **mlm(sample_list, model_output)}
    assert set(reported) == {"train/fashiongen/fashionvil_itm", "train/fashiongen/fashionvil_mlm"}
    kept = drop_skipped(reported)
    assert list(kept) == ["train/fashiongen/fashionvil_itm"]
    assert kept["train/fashiongen/fashionvil_itm"].item() == pytest.approx(nll([0, 1], 1))


# ----------------------------------------------------------------------------- classification
def test_itm_loss_by_hand():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [0.0, 3.0]])
    labels = torch.tensor([0, 1, 0])
    expected = (nll([2, -1], 0) + nll([0.5, 0.5], 1) + nll([0, 3], 0)) / 3
    value = run_loss("fashionvil_itm", {"itm_logits": logits, "itm_labels": labels})
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_classification_loss_by_hand_accepts_column_targets():
    scores = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    expected = (nll([1, 2, 3], 0) + nll([0, 0, 5], 2)) / 2
    for targets in (torch.tensor([0, 2]), torch.tensor([[0], [2]])):
        value = run_loss("fashionvil_classification", {"scores": scores},
                         {"targets": targets, "dataset_type": "train"})
        assert value.item() == pytest.approx(expected, rel=1e-6)
    assert run_loss("fashionvil_classification", {}, {"targets": torch.tensor([0])}).numel() == 0


# ----------------------------------------------------------------------------- masked CE
def test_masked_cross_entropy_uses_masked_positions_only():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 5, generator=generator)
    labels = torch.tensor([[-100, 3, -100, 0], [4, -100, -100, -100]])
    selected = [(0, 1, 3), (0, 3, 0), (1, 0, 4)]
    expected = sum(nll(logits[b, p].tolist(), t) for b, p, t in selected) / len(selected)
    assert masked_cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    # Changing the logits of unmasked positions changes nothing.
    changed = logits.clone()
    changed[0, 0] += 10
    changed[1, 3] -= 7
    assert masked_cross_entropy(changed, labels).item() == pytest.approx(expected, rel=1e-5)


def test_masked_cross_entropy_without_masked_positions_is_a_connected_zero():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    value = masked_cross_entropy(logits, torch.full((2, 3), -100))
    assert value.item() == 0
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_masked_cross_entropy_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="do not match"):
        masked_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("name, prefix", [("fashionvil_mlm", "mlm"), ("fashionvil_mpfc", "mpfc")])
def test_mlm_and_mpfc_losses(name, prefix):
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]]])
    labels = torch.tensor([[-100, 2]])
    value = run_loss(name, {f"{prefix}_logits": logits, f"{prefix}_labels": labels})
    assert value.item() == pytest.approx(nll([0, 2, 1], 2), rel=1e-6)
    assert run_loss(name, {f"{prefix}_logits": logits}).numel() == 0


# ----------------------------------------------------------------------------- PAC
def test_soft_label_cross_entropy_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.0], [5.0, 5.0, 5.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 1]])
    log_z0 = math.log(math.exp(1) + math.exp(2) + 1)
    log_z2 = math.log(2 + math.exp(1))
    row0 = -(0.5 * (1 - log_z0) + 0.5 * (2 - log_z0))  # two labels: 0.5 each
    row2 = -(1 - log_z2)
    expected = (row0 + row2) / 2  # the unlabelled row is left out
    value = soft_label_cross_entropy(logits, labels)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_soft_label_cross_entropy_without_labels_is_a_connected_zero():
    logits = torch.randn(2, 4, requires_grad=True)
    value = soft_label_cross_entropy(logits, torch.zeros(2, 4))
    value.backward()
    assert value.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_soft_label_cross_entropy_leaves_out_unlabelled_rows_and_rejects_negative_labels():
    logits = torch.tensor([[0.0, 1.0, 2.0], [5.0, -3.0, 0.0]])
    labels = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # row 1 has no label
    expected = 0.5 * (nll([0, 1, 2], 1) + nll([0, 1, 2], 2))  # the mean over row 0 only
    assert soft_label_cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # Checked on the device (torch._assert_async), so a RuntimeError.
    with pytest.raises(RuntimeError, match="must be non-negative"):
        soft_label_cross_entropy(logits, -labels)


def test_pac_loss_averages_image_and_text():
    image_logits = torch.tensor([[0.0, 1.0, 2.0]])
    text_logits = torch.tensor([[3.0, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    image = 0.5 * (nll([0, 1, 2], 0) + nll([0, 1, 2], 2))  # two labels: 0.5 each
    text = 0.5 * (nll([3, 0, 0], 0) + nll([3, 0, 0], 2))
    expected = (image + text) / 2
    outputs = {"pac_image_logits": image_logits, "pac_text_logits": text_logits}
    from_model = run_loss("fashionvil_pac", {**outputs, "pac_labels": labels})
    assert from_model.item() == pytest.approx(expected, rel=1e-6)
    assert run_loss("fashionvil_pac", outputs).numel() == 0  # no labels: PAC did not run
    assert run_loss("fashionvil_pac", {"pac_image_logits": image_logits}).numel() == 0


def test_every_loss_is_registered_under_its_name():
    for name in ("itc", "itm", "mlm", "mpfc", "mvc", "pac", "tgir", "classification", "ocir"):
        loss_class = registry.get_loss_class(f"fashionvil_{name}")
        assert loss_class is not None and loss_class.__module__ == losses.__name__


# ----------------------------------------------------------------------------- two ranks
ROWS_PER_RANK = (3, 2)  # unequal on purpose: the last batch of a split


def _global_pair():
    generator = torch.Generator().manual_seed(5)
    total = sum(ROWS_PER_RANK)
    return torch.randn(total, 4, generator=generator), torch.randn(total, 4, generator=generator)


def _rank_rows(rank):
    start = sum(ROWS_PER_RANK[:rank])
    return slice(start, start + ROWS_PER_RANK[rank])


def _two_rank_worker(rank, world_size, port, out_dir):
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        a, b = _global_pair()
        local_a = a[_rank_rows(rank)].clone().requires_grad_()
        local_b = b[_rank_rows(rank)].clone().requires_grad_()
        itc = losses.ImageTextContrastiveLoss()
        outputs = {"image_embedding": local_a, "text_embedding": local_b}
        train_loss = itc({"dataset_type": "train"}, outputs)
        train_loss.backward()
        val_loss = itc({"dataset_type": "val"}, outputs)
        # MVC contrasts composed and view embeddings with the same gathered InfoNCE.
        mvc_loss = losses.MultiViewContrastiveLoss()(
            {"dataset_type": "train"}, {"composed_embedding": local_a.detach(),
                                        "view_embedding": local_b.detach()})
        torch.save({"train": train_loss.detach(), "val": val_loss.detach(),
                    "mvc": mvc_loss, "grad_a": local_a.grad, "grad_b": local_b.grad},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_itc_and_mvc_over_two_gloo_ranks_equal_the_single_process_loss(tmp_path):
    world_size = len(ROWS_PER_RANK)
    mp.spawn(_two_rank_worker, args=(world_size, free_port(), str(tmp_path)),
             nprocs=world_size, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]

    a, b = _global_pair()
    a.requires_grad_()
    b.requires_grad_()
    expected = reference_info_nce(a, b)
    grad_a, grad_b = torch.autograd.grad(expected, (a, b))

    mean_over_ranks = sum(result["train"].item() for result in results) / world_size
    assert mean_over_ranks == pytest.approx(expected.item(), rel=1e-5)
    mvc_mean = sum(result["mvc"].item() for result in results) / world_size
    assert mvc_mean == pytest.approx(expected.item(), rel=1e-5)
    for rank, result in enumerate(results):
        rows = _rank_rows(rank)
        # Each rank's inputs receive the gradient of the sum of all ranks' losses; DDP then
        # averages over ranks, which gives the single-process gradient.
        torch.testing.assert_close(result["grad_a"], world_size * grad_a[rows])
        torch.testing.assert_close(result["grad_b"], world_size * grad_b[rows])
        # Evaluation batches contrast within the local batch only.
        local = reference_info_nce(a[rows].detach(), b[rows].detach())
        assert result["val"].item() == pytest.approx(local.item(), rel=1e-5)
