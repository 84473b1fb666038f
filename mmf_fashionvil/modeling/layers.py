"""The building blocks of FashionViL (SPEC §1): the ResNet grid image encoder, the shared
text/visual embeddings, the L2-normalise-and-scale layer of the joint space, the PAC and OCIR
heads, and small tensor helpers."""
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

CONFIG_PREFIX = "model_config.fashionvil"
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def grid_side(image_size):
    """Side of a ResNet's final feature map: five stride-2 stages, each ceil(n / 2)."""
    side = int(image_size)
    for _ in range(5):
        side = (side + 1) // 2
    return side


def masked_mean(hidden, mask):
    """Mean of ``hidden`` [B, L, H] over the positions where ``mask`` [B, L] is non-zero."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _tiny_resnet_layers(width):
    """A ResNet-10 trunk ([1, 1, 1, 1] BasicBlocks) with stage widths width * (1, 2, 4, 8).

    At width 64 it has exactly the layers (and parameter names) of torchvision's
    ``ResNet(BasicBlock, [1, 1, 1, 1])`` without avgpool/fc; smaller widths suit CPU runs.
    """
    layers = OrderedDict(
        conv1=nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False),
        bn1=nn.BatchNorm2d(width),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    in_channels = width
    for stage in range(4):
        out_channels, stride = width * 2**stage, 1 if stage == 0 else 2
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
            )
        layers[f"layer{stage + 1}"] = nn.Sequential(
            BasicBlock(in_channels, out_channels, stride, downsample)
        )
        in_channels = out_channels
    for module in layers.values():  # torchvision's ResNet initialisation
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return layers, in_channels


class GridImageEncoder(nn.Sequential):
    """ResNet without avgpool/fc; returns its final feature map rasterised row-major as a
    grid sequence [B, h * w, C] (224 px input -> 7 x 7 = 49 tokens)."""

    def __init__(self, arch="resnet50", width_base=64):
        if arch == "resnet_tiny":
            layers, out_channels = _tiny_resnet_layers(width_base)
        elif arch in TORCHVISION_RESNETS:
            resnet = torchvision.models.get_model(arch, weights=None)
            layers = OrderedDict(
                (name, module) for name, module in resnet.named_children()
                if name not in ("avgpool", "fc")
            )
            out_channels = resnet.fc.in_features
        else:
            raise ValueError(
                f"model_config.fashionvil.image_encoder.arch: unknown arch '{arch}'; "
                f"expected one of {TORCHVISION_RESNETS + ('resnet_tiny',)}"
            )
        super().__init__(layers)
        self.arch = arch
        self.out_channels = out_channels
        self.memory_format = torch.contiguous_format  # of weights and inputs

    def use_channels_last(self):
        """Keeps weights and inputs in channels_last memory format (NHWC): tensor-core
        convolutions under bf16/fp16 on GPUs run without layout conversions."""
        self.to(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last

    def forward(self, image):
        image = image.contiguous(memory_format=self.memory_format)
        return super().forward(image).flatten(2).transpose(1, 2)

    def load_torchvision_state_dict(self, state_dict, source):
        """Loads a torchvision ResNet state dict; its classifier (fc.*) is not used."""
        trunk_state = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        try:
            self.load_state_dict(trunk_state)
        except RuntimeError as error:
            raise ValueError(
                f"{source} does not hold weights of a torchvision {self.arch}: {error}"
            ) from error


class FashionViLEmbeddings(nn.Module):
    """BERT-style input embeddings for both modalities.

    Text: word + learned position + token-type(0) embeddings. Visual tokens (already
    projected to the transformer width): their own position table (0..N-1) + a visual
    modality (type) embedding. Both then go through the same LayerNorm and dropout.
    Attribute names of the text tables follow BERT's so its weights copy one-to-one.
    """

    def __init__(self, config, num_visual_positions):
        super().__init__()
        width = config.hidden_size
        self.word_embeddings = nn.Embedding(
            config.vocab_size, width, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, width)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, width)
        self.visual_position_embeddings = nn.Embedding(num_visual_positions, width)
        self.visual_type_embedding = nn.Parameter(torch.zeros(width))
        self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def embed_text(self, input_ids):
        length = input_ids.size(1)
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"text of {length} tokens is longer than max_position_embeddings="
                f"{self.position_embeddings.num_embeddings}"
            )
        positions = torch.arange(length, device=input_ids.device)
        embeddings = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings.weight[0]
        )
        return self.dropout(self.LayerNorm(embeddings))

    def embed_visual(self, visual_tokens):
        count = visual_tokens.size(1)
        if count > self.visual_position_embeddings.num_embeddings:
            raise ValueError(
                f"{count} visual tokens but only {self.visual_position_embeddings.num_embeddings}"
                " visual positions: raise model_config.fashionvil.image_encoder.image_size"
                " to the largest input image size"
            )
        embeddings = (
            visual_tokens
            + self.visual_position_embeddings.weight[:count]
            + self.visual_type_embedding
        )
        return self.dropout(self.LayerNorm(embeddings))

    @torch.no_grad()
    def copy_from_bert(self, bert_embeddings):
        """Copies BERT's tables; the visual position table starts as BERT's first text
        positions and the visual type as BERT's first segment (type 0) embedding, as the
        authors' code (their visual tokens use type id 0 of a copy of BERT's type table)."""
        text_tables = ("word_embeddings", "position_embeddings", "token_type_embeddings")
        for name in (*text_tables, "LayerNorm"):
            getattr(self, name).load_state_dict(getattr(bert_embeddings, name).state_dict())
        count = self.visual_position_embeddings.num_embeddings
        text_positions = bert_embeddings.position_embeddings.weight
        self.visual_position_embeddings.weight.copy_(text_positions[:count])
        type_table = bert_embeddings.token_type_embeddings.weight
        self.visual_type_embedding.copy_(type_table[0])


class ScaledL2Norm(nn.Module):
    """L2-normalises the last dim and multiplies by a learnable scalar s, so the dot
    product of two outputs is s^2 * cos (shared by both contrastive sides)."""

    def __init__(self, initial_scale):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(initial_scale)))

    def forward(self, x):
        return F.normalize(x, dim=-1) * self.scale


class CategorySubspaceHead(nn.Module):
    """OCIR head in the spirit of CSA-Net (Lin et al., CVPR 2020) on FashionViL item
    features: an item feature x is projected, f(x), and masked into a subspace chosen by a
    (source category, target category) pair — the mask is a softmax-weighted mix of K learned
    masks, the weights coming from an MLP on the two categories (CSA-Net's subspace
    attention; embedding lookups = a linear layer on concatenated one-hots).

    - outfit(features, categories, mask, target): each outfit item in the subspace of
      (its category, target category), then attention over the items with a learned query
      per target category; returns the attention-weighted sum [B, D].
    - item(features, category): a candidate in the subspace of (its category, its category),
      so it meets the outfits that ask for its category in the same space.
    Outputs are not normalised (the model's shared ScaledL2Norm follows)."""

    def __init__(self, dim, num_categories, num_subspaces, use_text, hidden=32):
        super().__init__()
        self.num_categories = int(num_categories)
        self.use_text = bool(use_text)  # item features include the text embedding
        self.projection = nn.Linear(dim, dim)
        # CSA-Net's mask initialisation (normal, mean 0.9, std 0.7), ReLU'd when applied.
        self.masks = nn.Parameter(torch.empty(num_subspaces, dim).normal_(0.9, 0.7))
        self.source_category = nn.Embedding(self.num_categories, hidden)
        self.target_category = nn.Embedding(self.num_categories, hidden)
        self.subspace_attention = nn.Linear(hidden, num_subspaces)
        self.item_query = nn.Embedding(self.num_categories, dim)

    def check_categories(self, *categories):
        for values in categories:
            low, high = (int(values.min()), int(values.max())) if values.numel() else (0, 0)
            if low < 0 or high >= self.num_categories:
                raise ValueError(
                    f"OCIR category indices {low}..{high} are outside 0.."
                    f"{self.num_categories - 1}: {CONFIG_PREFIX}.heads.ocir.num_categories="
                    f"{self.num_categories} does not fit the dataset's categories"
                )

    def subspace(self, features, source, target):
        """f(features) [..., D] masked into the subspace of each (source, target) pair [...]."""
        pair = F.relu(self.source_category(source) + self.target_category(target))
        weights = self.subspace_attention(pair).softmax(-1)
        return self.projection(features) * (weights @ F.relu(self.masks))

    def outfit(self, features, categories, mask, target):
        """features [B, M, D] of the outfit items (mask [B, M], 1 = real; every row needs one
        real item), their categories [B, M], the target category [B] -> [B, D]."""
        embedded = self.subspace(features, categories, target[:, None].expand_as(categories))
        query = self.item_query(target)[:, None, :]
        scores = (embedded * query).sum(-1) / embedded.size(-1) ** 0.5
        weights = scores.masked_fill(~mask, float("-inf")).softmax(1)
        return (weights[..., None] * embedded).sum(1)

    def item(self, features, category):
        return self.subspace(features, category, category)


class CosineClassifier(nn.Module):
    """Logits = logit_scale * cos(feature, class weight), with a learnable logit scale
    (unscaled cosines cannot make a softmax over thousands of classes confident)."""

    def __init__(self, in_features, num_classes, initial_logit_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.logit_scale = nn.Parameter(torch.tensor(float(initial_logit_scale)))

    def forward(self, features):
        cosines = F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).t()
        return self.logit_scale * cosines


def drop_tokens_at_random(mask, fraction, generator):
    """Keep-mask [B, L] that drops round(fraction * n) of the n real tokens of each row of
    ``mask`` (1 = real token) from attention, uniformly at random, always keeping at least
    one; padding stays 0. Draws on the generator's device without reading anything back to
    the host; returns ``mask``'s dtype/device."""
    real = mask.bool().to(generator.device)
    scores = torch.rand(real.shape, generator=generator, device=generator.device)
    rank_in_row = scores.masked_fill(~real, 2.0).argsort(1).argsort(1)  # real tokens first
    counts = real.sum(1)
    num_dropped = torch.minimum(torch.floor(fraction * counts + 0.5).long(), counts - 1)
    kept = real & (rank_in_row >= num_dropped.clamp(min=0)[:, None])
    return kept.to(device=mask.device, dtype=mask.dtype)
