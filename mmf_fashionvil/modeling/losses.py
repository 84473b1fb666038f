"""FashionViL losses (SPEC §2, §3, §9), registered in MMF's registry as ``fashionvil_*``.

Each loss is a small ``nn.Module`` with ``forward(sample_list, model_output) -> Tensor``;
the math lives in plain functions (:func:`contrastive_loss`, :func:`masked_cross_entropy`,
:func:`soft_label_cross_entropy`) so it can be checked on hand-made tensors.

Skipped losses (one task per step)
----------------------------------
Pre-training samples one task per step, so the model's output holds the keys of that task
only, while ``model_config.fashionvil.losses`` lists the losses of every task. A loss whose
inputs are absent from ``model_output`` returns :func:`skipped_loss` — an EMPTY tensor
(``numel() == 0``) — instead of a number:

- it is a tensor, so rc10's ``MMFLoss`` passes it through unchanged (it would crash on
  ``None``) and ``model_output["losses"]`` keeps rc10's shape;
- it is not a zero, so an absent task is never logged or averaged as "loss 0";
- :func:`drop_skipped` removes such entries; the trainer sums and reports only what it
  returns. A loop that forgets to (rc10's ``sum(l.mean() ...)``) gets NaN, not a silent 0.

Every rank runs the same task in a step, so every rank skips the same losses and the
collectives inside the contrastive losses stay matched.

Contrastive losses across ranks
-------------------------------
For training batches the contrastive losses take their negatives from every rank with
gradient (:func:`mmf_fashionvil.distributed.all_gather_with_grad`). Each rank's loss is the
sum over its own rows divided by (global rows / world size): with equal local batches that is
the local mean, and in every case the mean over ranks equals the single-process loss on the
concatenated batch, so DDP's gradient averaging yields that loss's gradient. Evaluation
batches use the local batch only: ranks may hold different numbers of evaluation batches, and
a collective inside a loss would then hang (the retrieval metrics are the real evaluation).

ITC/XMR treats row i of the other modality as the only positive of row i, so the training
datasets yield one item per product per batch position; two items of the same product in
one batch would count as each other's negatives.
"""
import torch
import torch.nn.functional as F
from torch import nn

from mmf.common.registry import registry
from mmf_fashionvil.distributed import all_gather_with_grad, get_rank, get_world_size
from mmf_fashionvil.modeling.masking import IGNORE_INDEX


def skipped_loss():
    """The value a loss returns when its task did not run this step (see module doc)."""
    return torch.zeros(0)


def drop_skipped(losses):
    """``losses`` (name -> tensor, e.g. ``model_output["losses"]``) without skipped entries."""
    return {name: value for name, value in losses.items() if value.numel() > 0}


def contrastive_loss(a, b, symmetric=True, gather=True):
    """InfoNCE with temperature 1 between rows of ``a`` [B, D] and ``b`` [B, D] (already
    normalised and scaled): row i of ``a`` should pick row i of ``b`` among all rows of ``b``
    and, when ``symmetric``, row i of ``b`` row i of ``a``; the two directions are averaged.

    With ``gather`` and several ranks the candidates are the rows of every rank (with
    gradient) and the value is this rank's share as explained in the module doc; with one
    process it is the plain mean over rows."""
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"contrastive_loss needs two [B, D] tensors of the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    world_size = get_world_size() if gather else 1
    rows = a.shape[0]
    if world_size == 1:
        all_a, all_b, first_row = a, b, 0
    else:
        gathered = all_gather_with_grad(torch.cat([a, b], dim=1))
        all_a, all_b = gathered.split(a.shape[1], dim=1)
        # Local batches may differ in size: this rank's rows start after every row of the
        # lower ranks.
        row_ranks = all_gather_with_grad(torch.full((rows,), get_rank(), device=a.device))
        first_row = (row_ranks < get_rank()).sum()  # on the device: no step waits for it
    targets = first_row + torch.arange(rows, device=a.device)
    loss_sum = F.cross_entropy(a @ all_b.t(), targets, reduction="sum")
    if symmetric:
        loss_sum = (loss_sum + F.cross_entropy(b @ all_a.t(), targets, reduction="sum")) / 2
    return loss_sum * world_size / all_a.shape[0]


def masked_cross_entropy(logits, labels):
    """Cross-entropy of ``logits`` [..., C] against ``labels`` [...] over the positions whose
    label is not IGNORE_INDEX (-100), averaged over those positions; a graph-connected zero
    when there is none (plain cross-entropy would give NaN). No value is read back to the
    host (a training step never waits for the GPU)."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"masked_cross_entropy: logits {tuple(logits.shape)} do not match labels "
            f"{tuple(labels.shape)} (expected logits = labels.shape + [num_classes])"
        )
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def soft_label_cross_entropy(logits, multi_hot):
    """Soft-label cross-entropy with the paper's label smoothing: each row's target spreads
    probability 1 evenly over its true labels (two labels -> 0.5 each). ``logits`` and
    ``multi_hot`` are [B, A]; rows without any label are left out and the result is the mean
    over the rows that have labels (a graph-connected zero if none has). Computed with a
    row weight instead of selecting rows, so no value is read back to the host."""
    if logits.shape != multi_hot.shape:
        raise ValueError(
            f"soft_label_cross_entropy: logits {tuple(logits.shape)} and labels "
            f"{tuple(multi_hot.shape)} differ in shape"
        )
    multi_hot = multi_hot.float()
    torch._assert_async((multi_hot >= 0).all(),
                        "soft_label_cross_entropy: attribute labels must be non-negative")
    counts = multi_hot.sum(dim=1)
    labelled = (counts > 0).float()
    targets = multi_hot / counts.clamp(min=1)[:, None]  # rows without labels: all zero
    row_losses = -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return (row_losses * labelled).sum() / labelled.sum().clamp(min=1)


def _is_training_batch(sample_list):
    return sample_list.get("dataset_type", "train") == "train"


class _TaskLoss(nn.Module):
    """Computes only when every key of ``required_outputs`` is in ``model_output``;
    otherwise returns :func:`skipped_loss`."""

    required_outputs = ()

    def forward(self, sample_list, model_output):
        if any(key not in model_output for key in self.required_outputs):
            return skipped_loss()
        return self.compute(sample_list, model_output)

    def compute(self, sample_list, model_output):
        raise NotImplementedError


class _PairContrastiveLoss(_TaskLoss):
    """InfoNCE between ``model_output[first]`` and ``model_output[second]`` (row i of one is
    the positive of row i of the other)."""

    def __init__(self, symmetric):
        super().__init__()
        self.symmetric = symmetric

    def forward(self, sample_list, model_output):
        # Evaluation rows of query/gallery datasets (TGIR, OCIR) are not pairs: row i of
        # one side is not row i's positive, so there is no loss to report for them.
        if "is_query" in sample_list and not _is_training_batch(sample_list):
            return skipped_loss()
        return super().forward(sample_list, model_output)

    def compute(self, sample_list, model_output):
        first, second = self.required_outputs
        return contrastive_loss(
            model_output[first], model_output[second], symmetric=self.symmetric,
            gather=_is_training_batch(sample_list),
        )


@registry.register_loss("fashionvil_itc")
class ImageTextContrastiveLoss(_PairContrastiveLoss):
    """ITC pre-training and XMR fine-tuning: symmetric InfoNCE between
    ``image_embedding`` and ``text_embedding``."""

    required_outputs = ("image_embedding", "text_embedding")

    def __init__(self, symmetric=True):
        super().__init__(symmetric)


@registry.register_loss("fashionvil_mvc")
class MultiViewContrastiveLoss(_PairContrastiveLoss):
    """MVC: symmetric InfoNCE between ``composed_embedding`` (text + view d through the
    fusion encoder) and ``view_embedding`` (the other view v through the image encoder)."""

    required_outputs = ("composed_embedding", "view_embedding")

    def __init__(self, symmetric=True):
        super().__init__(symmetric)


@registry.register_loss("fashionvil_tgir")
class TextGuidedImageRetrievalLoss(_PairContrastiveLoss):
    """TGIR: batch-based classification — each ``composed_embedding`` (modifying text +
    reference image) must pick its ``target_embedding`` among the batch's targets. One
    direction by default, as the batch-based classification loss of the TGIR literature."""

    required_outputs = ("composed_embedding", "target_embedding")

    def __init__(self, symmetric=False):
        super().__init__(symmetric)


@registry.register_loss("fashionvil_ocir")
class OutfitItemRetrievalLoss(_PairContrastiveLoss):
    """OCIR: each ``outfit_embedding`` (the outfit's other items + the target category) must
    pick row i of ``item_embedding`` — the outfit's removed (blank) item — among the batch's
    blank items. One direction by default, like the TGIR loss."""

    required_outputs = ("outfit_embedding", "item_embedding")

    def __init__(self, symmetric=False):
        super().__init__(symmetric)


@registry.register_loss("fashionvil_itm")
class ImageTextMatchingLoss(_TaskLoss):
    """ITM: cross-entropy of ``itm_logits`` [B, 2] against ``itm_labels`` [B] (1 = match)."""

    required_outputs = ("itm_logits", "itm_labels")

    def compute(self, sample_list, model_output):
        return F.cross_entropy(model_output["itm_logits"], model_output["itm_labels"])


@registry.register_loss("fashionvil_mlm")
class MaskedLanguageModelingLoss(_TaskLoss):
    """MLM: cross-entropy of ``mlm_logits`` [M, V] against ``mlm_labels`` [M], the M masked
    text positions of the batch (the model evaluates its head there only)."""

    required_outputs = ("mlm_logits", "mlm_labels")

    def compute(self, sample_list, model_output):
        return masked_cross_entropy(model_output["mlm_logits"], model_output["mlm_labels"])


@registry.register_loss("fashionvil_mpfc")
class MaskedPatchFeatureClassificationLoss(_TaskLoss):
    """MPFC: cross-entropy of ``mpfc_logits`` [B, N, K] against the tokenizer's code ids
    ``mpfc_labels`` [B, N] over the masked patches (label -100 at unmasked patches)."""

    required_outputs = ("mpfc_logits", "mpfc_labels")

    def compute(self, sample_list, model_output):
        return masked_cross_entropy(model_output["mpfc_logits"], model_output["mpfc_labels"])


@registry.register_loss("fashionvil_pac")
class PseudoAttributeClassificationLoss(_TaskLoss):
    """PAC: soft-label cross-entropy (paper's smoothing) on both ``pac_image_logits`` and
    ``pac_text_logits`` [B, A] against the multi-hot ``pac_labels``; the mean of the two so
    that PAC's scale matches the other single-term losses."""

    required_outputs = ("pac_image_logits", "pac_text_logits", "pac_labels")

    def compute(self, sample_list, model_output):
        labels = model_output["pac_labels"]
        image_loss = soft_label_cross_entropy(model_output["pac_image_logits"], labels)
        text_loss = soft_label_cross_entropy(model_output["pac_text_logits"], labels)
        return (image_loss + text_loss) / 2


@registry.register_loss("fashionvil_classification")
class ClassificationLoss(_TaskLoss):
    """SCR/CR: cross-entropy of ``scores`` [B, C] against ``sample_list.targets`` [B]."""

    required_outputs = ("scores",)

    def compute(self, sample_list, model_output):
        targets = sample_list["targets"]
        if targets.dim() == 2 and targets.shape[1] == 1:
            targets = targets.squeeze(1)
        return F.cross_entropy(model_output["scores"], targets.long())
