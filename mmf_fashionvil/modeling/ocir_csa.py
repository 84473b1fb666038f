"""The authors' OCIR model (their ``mmf/models/ocir.py``, after CSA-Net, Lin et al. CVPR 2020),
registered as ``fashionvil_ocir_csa``: the image encoder only, no transformer.

- item feature: ResNet average-pooled (2048-d for ResNet-50) -> linear to ``feature_dim``;
- a question item (an outfit item) is conditioned on the pair (its category, the blank's
  category): ``num_conditions`` learned masks over the feature, weighted by a softmax MLP on
  the two-hot of the two categories, averaged (:class:`ConditionMasks`);
- both sides go through the learnable-scale L2 normalisation (s = ``initial_scale``);
- training is pairwise: each row's blank against ONE question item of its outfit, drawn at
  random (the authors' dataset draws one per entry), with a contrastive loss over the batch;
- evaluation: an outfit query = the mean of its question items' conditioned embeddings; a
  candidate = its plain embedding (the ``fashionvil_ocir`` metric's fields).

The backbone: ``image_encoder`` has the ``fashionvil`` model's names, so a FashionViL
checkpoint's image encoder loads with ``checkpoint.resume_pretrained=True`` (the core that
must load is the image encoder); its last stage (``layer4``) and every BatchNorm are frozen
(BatchNorm also kept in eval mode), as the authors'. Batch fields: the ``polyvore_ocir``
dataset's (``data/polyvore/dataset.py``).
"""
import os

import torch
import torch.nn.functional as F
from mmf.common.registry import registry
from mmf.models.base_model import BaseModel
from omegaconf import OmegaConf
from torch import nn

from mmf_fashionvil import CONFIGS_DIR, assets
from mmf_fashionvil.modeling.config import ocir_num_categories
from mmf_fashionvil.modeling.layers import GridImageEncoder, ScaledL2Norm
from mmf_fashionvil.rng import batch_generator

MODEL_NAME = "fashionvil_ocir_csa"
CONFIG_PREFIX = f"model_config.{MODEL_NAME}"
DEFAULTS_YAML = os.path.join(CONFIGS_DIR, "models", MODEL_NAME, "defaults.yaml")
FROZEN_STAGE = "layer4"


class ConditionMasks(nn.Module):
    """CSA-Net's category-conditioned subspaces: x [N, D] and the (source, target) category
    pair of each row -> mean over K of x * mask_k * w_k, w = softmax(MLP(two-hot))."""

    def __init__(self, dim, num_categories, num_conditions, hidden):
        super().__init__()
        self.num_categories = int(num_categories)
        self.weights = nn.Sequential(
            nn.Linear(2 * self.num_categories, hidden), nn.ReLU(),
            nn.Linear(hidden, num_conditions), nn.Softmax(dim=-1),
        )
        # N(0, 1) as the authors' nn.Embedding table of masks.
        self.masks = nn.Parameter(torch.randn(num_conditions, dim))

    def forward(self, features, source, target):
        two_hot = torch.cat([F.one_hot(source, self.num_categories),
                             F.one_hot(target, self.num_categories)], -1).to(features.dtype)
        mixed_mask = self.weights(two_hot) @ self.masks / self.masks.size(0)
        return features * mixed_mask


@registry.register_model(MODEL_NAME)
class OutfitConditionMaskNet(BaseModel):
    """The authors' OCIR head on FashionViL's image encoder (see the module docstring)."""

    # checkpoint.resume_pretrained must load the whole backbone (training/checkpoints.py).
    pretrained_core_prefixes = ("image_encoder",)

    @classmethod
    def config_path(cls):
        return DEFAULTS_YAML

    def build(self):
        given = (OmegaConf.to_container(self.config, resolve=True)
                 if OmegaConf.is_config(self.config) else self.config)
        config = OmegaConf.merge(OmegaConf.load(DEFAULTS_YAML).model_config[MODEL_NAME], given)
        image = config.image_encoder
        self.image_encoder = GridImageEncoder(image.arch, int(image.width_base))
        if image.pretrained is not None:
            self.image_encoder.load_torchvision_state_dict(
                assets.load_resnet_state_dict(image.arch, image.pretrained),
                f"{CONFIG_PREFIX}.image_encoder.pretrained={image.pretrained}")
        self.freeze_last_stage = bool(config.freeze_last_stage)
        self.freeze_batchnorm = bool(config.freeze_batchnorm)
        if self.freeze_last_stage:
            getattr(self.image_encoder, FROZEN_STAGE).requires_grad_(False)
        if self.freeze_batchnorm:
            for module in self._batchnorms():
                module.requires_grad_(False)
        num_categories = ocir_num_categories(config.num_categories,
                                             f"{CONFIG_PREFIX}.num_categories")
        self.feature_dim = int(config.feature_dim)
        self.projection = nn.Linear(self.image_encoder.out_channels, self.feature_dim)
        self.conditions = ConditionMasks(self.feature_dim, num_categories,
                                         int(config.num_conditions), int(config.condition_hidden))
        self.embedding_norm = ScaledL2Norm(float(config.initial_scale))
        self.backbone_lr_multiplier = float(config.backbone_lr_multiplier)

    def _batchnorms(self):
        return [m for m in self.image_encoder.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_batchnorm:  # running statistics stay the pre-trained ones
            for module in self._batchnorms():
                module.eval()
        return self

    def item_features(self, images):
        """Projected average-pooled ConvNet features [N, feature_dim] of images [N, 3, H, W]."""
        return self.projection(self.image_encoder(images).mean(1))

    def condition(self, features, source, target):
        return self.embedding_norm(self.conditions(features, source, target))

    def _check_categories(self, categories):
        """Evaluation only (reading the range synchronises with the device)."""
        if categories.numel():
            low, high = int(categories.min()), int(categories.max())
            if low < 0 or high >= self.conditions.num_categories:
                raise ValueError(f"OCIR category indices {low}..{high} are outside 0.."
                                 f"{self.conditions.num_categories - 1}: {CONFIG_PREFIX}."
                                 "num_categories does not fit the dataset's categories")

    def forward(self, sample_list):
        outfit_images = sample_list["outfit_images"]
        outfit_mask = sample_list["outfit_mask"].bool()
        outfit_categories = sample_list["outfit_categories"].long()
        target = sample_list["category"].view(-1).long()
        has_item = sample_list["has_item"].view(-1)
        if self.training:
            outfit = self._one_question_item_per_row(sample_list, outfit_images, outfit_mask,
                                                     outfit_categories, target)
        else:
            outfit = self._outfit_queries(outfit_images, outfit_mask, outfit_categories, target)
        items = self.embedding_norm(self.item_features(sample_list["item_image"]))
        return {"outfit_embedding": outfit,
                "item_embedding": items * has_item[:, None].to(items.dtype)}

    def _one_question_item_per_row(self, sample_list, images, mask, categories, target):
        """Pairwise training: one real outfit item per row, uniformly at random (drawn
        on the device: no host synchronisation)."""
        generator = batch_generator(images.device, sample_list.get("random_seed"))
        scores = torch.rand(mask.shape, generator=generator, device=images.device)
        pick = scores.masked_fill(~mask, -1.0).argmax(1)
        rows = torch.arange(len(pick), device=images.device)
        features = self.item_features(images[rows, pick])
        return self.condition(features, categories[rows, pick], target)

    def _outfit_queries(self, images, mask, categories, target):
        """Each row's mean of its question items' conditioned embeddings; zeros on rows
        without an outfit (candidates)."""
        self._check_categories(torch.cat([categories[mask], target]))
        per_item = images.new_zeros(*mask.shape, self.feature_dim)
        if mask.any():
            targets = target[:, None].expand_as(categories)
            per_item[mask] = self.condition(self.item_features(images[mask]),
                                            categories[mask], targets[mask]).to(per_item.dtype)
        counts = mask.sum(1, keepdim=True).clamp(min=1).to(per_item.dtype)
        return per_item.sum(1) / counts

    def get_optimizer_parameters(self, config):
        """The backbone at lr * backbone_lr_multiplier (the authors: 1), the rest at lr."""
        lr = config.get("optimizer", {}).get("params", {}).get("lr")
        if lr is None:
            raise ValueError("get_optimizer_parameters needs optimizer.params.lr in the config")
        backbone = [p for p in self.image_encoder.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in self.image_encoder.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        groups = [{"name": "backbone", "params": backbone, "lr": lr * self.backbone_lr_multiplier},
                  {"name": "head", "params": rest, "lr": lr}]
        return [group for group in groups if group["params"]]
