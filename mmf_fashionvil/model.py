"""FashionViL (Han et al., ECCV 2022) as an MMF model, registered as ``fashionvil``.

One ConvNet image encoder (IE) and one BERT transformer whose weights serve both as the
text encoder (TE: text tokens only) and as the fusion encoder (FE: text tokens followed by
visual tokens). See SPEC §1 and §9. The three ways to use it:

1. single-stream (early fusion): ``fuse(input_ids, input_mask, visual_tokens)``;
2. two-stream (late fusion): ``encode_image(image)`` and ``encode_text(input_ids, input_mask)``;
3. early-fusion two-stream: ``compose(input_ids, input_mask, image)`` against
   ``encode_image(other_image)``.

Task branches (one method per task, chosen per batch by ``task_of``): pre-training (SPEC §2)
``forward_two_stream`` (itc, xmr), ``forward_itm``, ``forward_mlm``, ``forward_mpfc``,
``forward_mvc``, ``forward_pac``; downstream (SPEC §3) ``forward_tgir`` (early-fusion
two-stream), ``forward_scr`` (single-stream classifier), ``forward_ocir`` (category subspaces).

Who draws the random choices: MLM masks (``masked_input_ids`` + ``lm_label_ids``) and MPFC
patch masks (``patch_mask``) are taken from the batch when the dataset provides them and
are otherwise drawn here with masking.py (MLM then needs ``word_ids``). Hard negatives (ITM)
and dropped tokens (MVC) are always drawn here. All of these come from one CPU
``torch.Generator`` per batch, seeded from torch's global RNG (which the trainer seeds and
checkpoints per rank, so a resumed run draws the same) XOR the rank.
"""
import copy
import json
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from mmf.common.registry import registry
from mmf.models.base_model import BaseModel
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEncoder, BertOnlyMLMHead

from mmf_fashionvil import assets
from mmf_fashionvil.distributed import all_gather_with_grad, get_rank
from mmf_fashionvil.data.polyvore.dataset import NUM_CATEGORIES_KEY
from mmf_fashionvil.image_tokenizer import load_image_tokenizer, to_tokenizer_input
from mmf_fashionvil.masking import (
    IGNORE_INDEX,
    block_patch_mask,
    hard_negative_indices,
    whole_word_mask,
)

DEFAULTS_YAML = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "configs", "models", "fashionvil", "defaults.yaml"
)
PRETRAINING_TASKS = ("itc", "itm", "mlm", "mpfc", "mvc", "pac")
DOWNSTREAM_TASKS = ("xmr", "tgir", "scr", "ocir")
TASKS_WITH_HEADS = ("itm", "mlm", "mpfc", "pac", "scr", "ocir")
# Tokens whose ids MLM masking needs (looked up in the WordPiece vocabulary).
MASK_TOKEN = "[MASK]"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", MASK_TOKEN)
CONFIG_PREFIX = "model_config.fashionvil"
TOKENIZER_TRAINING_COMMAND = (
    "mmf_run config=<tokenizer config> model=fashionvil_image_tokenizer "
    "dataset=fashion_pretraining training.trainer=fashionvil_trainer env.save_dir=<dir>"
)
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# BertConfig fields that model_config.fashionvil.bert may set (without a pretrained checkpoint).
BERT_ARCHITECTURE_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "initializer_range",
)


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

    def forward(self, image):
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
        positions and the visual type as BERT's second segment (type 1) embedding."""
        text_tables = ("word_embeddings", "position_embeddings", "token_type_embeddings")
        for name in (*text_tables, "LayerNorm"):
            getattr(self, name).load_state_dict(getattr(bert_embeddings, name).state_dict())
        count = self.visual_position_embeddings.num_embeddings
        text_positions = bert_embeddings.position_embeddings.weight
        self.visual_position_embeddings.weight.copy_(text_positions[:count])
        type_table = bert_embeddings.token_type_embeddings.weight
        self.visual_type_embedding.copy_(type_table[min(1, type_table.size(0) - 1)])


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


def classification_head(width, num_classes):
    """MLP on the FE [CLS] output, as the authors' classification head:
    Linear(width, 2 width) - GELU - LayerNorm - Linear(2 width, num_classes)."""
    if num_classes is None:
        raise ValueError(
            "training task 'scr' needs model_config.fashionvil.heads.scr.num_classes (48 "
            "categories / 121 subcategories on FashionGen)"
        )
    return nn.Sequential(
        nn.Linear(width, 2 * width), nn.GELU(), nn.LayerNorm(2 * width, eps=1e-12),
        nn.Linear(2 * width, int(num_classes)),
    )


def read_vocab(vocab_file):
    """Tokens of a WordPiece vocab.txt (one token per line; the line index is the id)."""
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(
            f"model_config.fashionvil.bert.vocab_file: {vocab_file} does not exist"
        )
    with open(vocab_file, encoding="utf-8") as f:
        return f.read().splitlines()


def read_vocab_size(vocab_file):
    """Number of tokens of a WordPiece vocab.txt."""
    return len(read_vocab(vocab_file))


def drop_tokens_at_random(mask, fraction, generator):
    """Keep-mask [B, L] that drops round(fraction * n) of the n real tokens of each row of
    ``mask`` (1 = real token) from attention, uniformly at random, always keeping at least
    one; padding stays 0. Draws from ``generator`` (CPU); returns ``mask``'s dtype/device."""
    real = mask.bool().cpu()
    scores = torch.rand(real.shape, generator=generator).masked_fill(~real, 2.0)
    rank_in_row = scores.argsort(1).argsort(1)  # real tokens first, in random order
    counts = real.sum(1)
    num_dropped = torch.minimum(torch.floor(fraction * counts + 0.5).long(), counts - 1)
    kept = real & (rank_in_row >= num_dropped.clamp(min=0)[:, None])
    return kept.to(device=mask.device, dtype=mask.dtype)


@registry.register_model("fashionvil")
class FashionViL(BaseModel):
    """FashionViL: ResNet grid image encoder + one BERT used as text and fusion encoder."""

    @classmethod
    def config_path(cls):
        return DEFAULTS_YAML

    # ------------------------------------------------------------------ building
    def build(self):
        config = self.config
        self.training_tasks = list(config.get("training_tasks", ["itc"]))
        unknown = set(self.training_tasks) - set(PRETRAINING_TASKS + DOWNSTREAM_TASKS)
        if unknown or not self.training_tasks:
            raise ValueError(
                f"model_config.fashionvil.training_tasks={self.training_tasks}: expected a "
                f"non-empty list from {PRETRAINING_TASKS + DOWNSTREAM_TASKS}"
            )

        evaluation_task = config.get("evaluation_task")
        known_tasks = PRETRAINING_TASKS + DOWNSTREAM_TASKS
        if evaluation_task is not None and evaluation_task not in known_tasks:
            raise ValueError(
                f"model_config.fashionvil.evaluation_task={evaluation_task}: expected one of "
                f"{known_tasks}"
            )

        image_config = config.image_encoder
        self.image_encoder = GridImageEncoder(image_config.arch, image_config.get("width_base", 64))
        pretrained_bert = self._load_pretrained_bert()
        self.bert_config = self._bert_config(pretrained_bert)
        width = self.bert_config.hidden_size
        embedding_dim = config.get("embedding_dim", 256)

        self.visual_projection = nn.Linear(self.image_encoder.out_channels, width)
        self.embeddings = FashionViLEmbeddings(
            self.bert_config, grid_side(image_config.get("image_size", 224)) ** 2
        )
        self.encoder = BertEncoder(self.bert_config)
        self.image_projection = nn.Linear(width, embedding_dim)  # g (image and composed side)
        self.text_projection = nn.Linear(width, embedding_dim)  # f
        self.embedding_norm = ScaledL2Norm(config.get("initial_scale", 4.0))
        # The frozen MPFC target tokenizer is kept outside the module tree (set past
        # nn.Module.__setattr__): it is not trained, so it stays out of the parameters
        # (optimizer groups, DDP), the state dict (checkpoints) and .to()/.train();
        # ``mpfc_targets`` moves it to the images' device and it is always in eval mode.
        tokenizer = self._load_image_tokenizer() if "mpfc" in self.training_tasks else None
        object.__setattr__(self, "image_tokenizer", tokenizer)
        self._build_task_heads(width, embedding_dim)
        self.mlm_token_ids = self._mlm_token_ids() if "mlm" in self.training_tasks else None

        for name, module in self.named_children():
            if name != "image_encoder":
                module.apply(self._init_bert_style)
        if hasattr(self, "mlm_head"):
            self._tie_mlm_head()
        if pretrained_bert is not None:
            self.embeddings.copy_from_bert(pretrained_bert.embeddings)
            self.encoder.load_state_dict(pretrained_bert.encoder.state_dict())
        if image_config.get("pretrained") is not None:
            state_dict = assets.load_resnet_state_dict(image_config.arch, image_config.pretrained)
            self.image_encoder.load_torchvision_state_dict(
                state_dict, f"image_encoder.pretrained={image_config.pretrained}"
            )

    def _load_pretrained_bert(self):
        name_or_path = self.config.bert.get("pretrained")
        if name_or_path is None:
            return None
        return assets.load_pretrained_bert(name_or_path)

    def _bert_config(self, pretrained_bert):
        """The checkpoint's architecture when one is loaded, else the configured one
        (vocab_size = lines of bert.vocab_file when that is set)."""
        bert = self.config.bert
        vocab_file = bert.get("vocab_file")
        if pretrained_bert is not None:
            bert_config = copy.deepcopy(pretrained_bert.config)
            if vocab_file is not None and read_vocab_size(vocab_file) != bert_config.vocab_size:
                raise ValueError(
                    f"bert.vocab_file {vocab_file} has {read_vocab_size(vocab_file)} tokens but "
                    f"the pretrained BERT {bert.pretrained} has vocab_size {bert_config.vocab_size}"
                )
        else:
            architecture = {k: bert[k] for k in BERT_ARCHITECTURE_KEYS if bert.get(k) is not None}
            if vocab_file is not None:
                architecture["vocab_size"] = read_vocab_size(vocab_file)
            bert_config = BertConfig(**architecture)
        # Our masks are boolean [B, 1, 1, L] (True = attend), the form SDPA takes.
        bert_config._attn_implementation = "sdpa"
        return bert_config

    def _build_task_heads(self, width, embedding_dim):
        """Heads exist only for the tasks being trained."""
        tasks = set(self.training_tasks)
        heads = self.config.get("heads", {})
        rerank_top_k = int(heads.get("itm", {}).get("rerank_top_k", 0) or 0)
        if "itm" in tasks or rerank_top_k > 0:
            self.itm_head = nn.Linear(width, 2)  # on the FE [CLS] output
            if "itm" not in tasks:
                # Kept for re-ranking only (weights from the pre-trained checkpoint): frozen,
                # so fine-tuning leaves it as pre-trained and DDP expects no gradient for it.
                self.itm_head.requires_grad_(False)
        if "mlm" in tasks:
            self.mlm_head = BertOnlyMLMHead(self.bert_config)
        if "mpfc" in tasks:
            # on FE visual outputs, one class per tokenizer code
            self.mpfc_head = nn.Linear(width, self.image_tokenizer.codebook_size)
        if "pac" in tasks:
            num_attributes = self._num_attributes(heads.get("pac", {}))
            self.pac_head = CosineClassifier(
                embedding_dim, num_attributes, heads.pac.get("initial_logit_scale", 10.0)
            )
        if "scr" in tasks:
            self.scr_head = classification_head(width, heads.get("scr", {}).get("num_classes"))
        if "ocir" in tasks:
            ocir = heads.get("ocir", {})
            self.ocir_head = CategorySubspaceHead(
                embedding_dim, self._ocir_num_categories(ocir), ocir.get("num_subspaces", 5),
                ocir.get("use_text", False),
            )

    @staticmethod
    def _ocir_num_categories(ocir):
        """``heads.ocir.num_categories``; checked against the number of dense categories the
        polyvore_ocir builder registered (when a dataset was built), which it defaults to."""
        configured = ocir.get("num_categories")
        from_data = registry.get(NUM_CATEGORIES_KEY, no_warning=True)
        if configured is None and from_data is None:
            raise ValueError(
                f"training task 'ocir' needs {CONFIG_PREFIX}.heads.ocir.num_categories (the "
                "number of distinct category_ids in polyvore_item_metadata.json)"
            )
        if configured is not None and from_data is not None and int(configured) != from_data:
            raise ValueError(
                f"{CONFIG_PREFIX}.heads.ocir.num_categories={configured} but the polyvore_ocir "
                f"dataset's metadata has {from_data} distinct category_ids: set it to "
                f"{from_data} (or null to take the dataset's)"
            )
        return int(configured if configured is not None else from_data)

    @staticmethod
    def _num_attributes(pac):
        """``heads.pac.num_attributes``, else the length of the vocabulary in
        ``heads.pac.attributes_file`` (the attribute miner's attributes.json)."""
        if pac.get("num_attributes") is not None:
            return int(pac.num_attributes)
        path = pac.get("attributes_file")
        if path is None:
            raise ValueError(
                f"training task 'pac' needs {CONFIG_PREFIX}.heads.pac.attributes_file (the "
                "attribute miner's attributes.json) or heads.pac.num_attributes"
            )
        if not os.path.isfile(str(path)):
            raise ValueError(
                f"{CONFIG_PREFIX}.heads.pac.attributes_file={path} does not exist: run "
                "`python -m mmf_fashionvil.attributes --data-dir <data_dir>` first"
            )
        with open(str(path), encoding="utf-8") as handle:
            return len(json.load(handle)["vocabulary"])

    def _mlm_token_ids(self):
        """(mask token id, special token ids) for MLM masks drawn in the model:
        ``heads.mlm.mask_token_id`` / ``special_token_ids`` where set, else looked up in
        bert.vocab_file or the pretrained BERT's vocab.txt; None when neither is known
        (then only batches that bring their own masks can run MLM)."""
        mlm = self.config.get("heads", {}).get("mlm", {})
        mask_token_id, special_ids = mlm.get("mask_token_id"), mlm.get("special_token_ids")
        if mask_token_id is not None and special_ids is not None:
            return int(mask_token_id), [int(i) for i in special_ids]
        vocab_file = self.config.bert.get("vocab_file")
        if vocab_file is None and self.config.bert.get("pretrained") is not None:
            try:
                vocab_file = assets.resolve_vocab_file(self.config.bert.pretrained)
            except assets.MissingAssetError:
                return None
        if vocab_file is None:
            return None
        ids = {token: index for index, token in enumerate(read_vocab(vocab_file))}
        missing = [token for token in SPECIAL_TOKENS if token not in ids]
        if missing:
            raise ValueError(
                f"{vocab_file} has no {missing} token(s), which MLM masking needs; set "
                f"{CONFIG_PREFIX}.heads.mlm.mask_token_id and special_token_ids"
            )
        if mask_token_id is None:
            mask_token_id = ids[MASK_TOKEN]
        if special_ids is None:
            special_ids = [ids[token] for token in SPECIAL_TOKENS]
        return int(mask_token_id), [int(i) for i in special_ids]

    def _load_image_tokenizer(self):
        """The frozen VQ-VAE whose codes are the MPFC targets (SPEC §2, §9)."""
        mpfc = self.config.heads.mpfc
        key = f"{CONFIG_PREFIX}.heads.mpfc.tokenizer_checkpoint"
        if mpfc.get("tokenizer_checkpoint") is None:
            raise ValueError(
                f"training task 'mpfc' needs {key}: the checkpoint of a trained image "
                f"tokenizer. Train one with `{TOKENIZER_TRAINING_COMMAND}` (dataset images "
                "normalised with mean = std = 0.5, see mmf_fashionvil/image_tokenizer.py) "
                "and set the key to <dir>/best.ckpt or <dir>/current.ckpt"
            )
        tokenizer = load_image_tokenizer(mpfc.tokenizer_checkpoint).requires_grad_(False)
        source = f"{key}={mpfc.tokenizer_checkpoint}"
        if mpfc.get("num_codes") is not None and tokenizer.codebook_size != int(mpfc.num_codes):
            raise ValueError(
                f"{source} has {tokenizer.codebook_size} codes but "
                f"{CONFIG_PREFIX}.heads.mpfc.num_codes={mpfc.num_codes}: set them equal"
            )
        image_size = self.config.image_encoder.get("image_size", 224)
        encoder_side = grid_side(image_size)
        if tokenizer.grid_size != encoder_side:
            raise ValueError(
                f"{source} gives a {tokenizer.grid_size}x{tokenizer.grid_size} code grid "
                f"(image_size {tokenizer.config.image_size} / stride {tokenizer.stride}) but "
                f"the image encoder gives a {encoder_side}x{encoder_side} grid at "
                f"{CONFIG_PREFIX}.image_encoder.image_size={image_size}: the codes must align "
                "one-to-one with the grid patches"
            )
        return tokenizer

    def _init_bert_style(self, module):
        std = self.bert_config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, CosineClassifier):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, FashionViLEmbeddings):
            nn.init.normal_(module.visual_type_embedding, std=std)

    def _tie_mlm_head(self):
        predictions = self.mlm_head.predictions
        predictions.decoder.weight = self.embeddings.word_embeddings.weight
        nn.init.zeros_(predictions.bias)
        predictions.decoder.bias = predictions.bias

    # ------------------------------------------------------------ usage modes
    def _transformer(self, embeddings, attention_mask):
        mask = attention_mask.bool()[:, None, None, :]
        return self.encoder(embeddings, attention_mask=mask).last_hidden_state

    def image_grid_features(self, image):
        """ConvNet grid features [B, N, C] of images [B, 3, H, W], before the visual
        projection (MPFC masks patches here)."""
        return self.image_encoder(image)

    def encode_image(self, image):
        """Image-only path IE(v) (no transformer).

        Returns (visual tokens [B, N, H] = projected grid features,
                 image embedding [B, D] = s * normalize(g(mean of the tokens))).
        """
        tokens = self.visual_projection(self.image_grid_features(image))
        return tokens, self.embedding_norm(self.image_projection(tokens.mean(1)))

    def encode_text(self, input_ids, input_mask):
        """Text encoder TE(w): the transformer on text alone.

        Returns (token outputs [B, L, H],
                 text embedding [B, D] = s * normalize(f(masked mean of the outputs))).
        """
        hidden = self._transformer(self.embeddings.embed_text(input_ids), input_mask)
        return hidden, self.embedding_norm(self.text_projection(masked_mean(hidden, input_mask)))

    def fuse(self, input_ids, input_mask, visual_tokens, visual_mask=None):
        """Fusion encoder FE([w; v]) (single stream): the same transformer on text tokens
        followed by visual tokens [B, N, H] (from ``encode_image``).

        ``visual_mask`` [B, N] (1 = attend) drops visual tokens from attention.
        Returns the sequence output [B, L + N, H] (text positions first).
        """
        if visual_mask is None:
            visual_mask = input_mask.new_ones(visual_tokens.shape[:2])
        sequence = torch.cat(
            [self.embeddings.embed_text(input_ids), self.embeddings.embed_visual(visual_tokens)], 1
        )
        return self._transformer(sequence, torch.cat([input_mask, visual_mask.to(input_mask)], 1))

    def compose(self, input_ids, input_mask, image, visual_mask=None):
        """Early-fusion two-stream side FE([w; d]): text (e.g. a modification) fused with
        image d. Returns the composed embedding [B, D] = s * normalize(g(mean of the
        visual-token outputs)), comparable with ``encode_image`` embeddings."""
        visual_tokens = self.visual_projection(self.image_grid_features(image))
        if visual_mask is None:
            visual_mask = input_mask.new_ones(visual_tokens.shape[:2])
        sequence = self.fuse(input_ids, input_mask, visual_tokens, visual_mask)
        visual_outputs = sequence[:, input_ids.size(1):]
        return self.embedding_norm(self.image_projection(masked_mean(visual_outputs, visual_mask)))

    # ----------------------------------------------------------------- forward
    def task_of(self, sample_list):
        """The batch's task: ``sample_list.task`` if present (the trainer sets it for training
        steps); else, in evaluation, ``evaluation_task`` when configured (pre-training
        evaluates by retrieval, whatever it trains); else the first training task."""
        task = sample_list.get("task")
        if task is None:
            evaluation_task = self.config.get("evaluation_task")
            if not self.training and evaluation_task is not None:
                return evaluation_task
            return self.training_tasks[0]
        if isinstance(task, (list, tuple)):
            if len(set(task)) != 1:
                raise ValueError(f"a batch must hold one task, got {sorted(set(task))}")
            task = task[0]
        return task

    def forward(self, sample_list):
        task = self.task_of(sample_list)
        if task in TASKS_WITH_HEADS:
            self._head(task)  # fail before any work when the head was not built
        if task in ("itc", "xmr"):
            return self.forward_two_stream(sample_list)
        if task == "pac":
            return self.forward_pac(sample_list)
        if task == "scr":
            return self.forward_scr(sample_list)
        if task == "tgir":
            return self.forward_tgir(sample_list)
        if task == "ocir":
            return self.forward_ocir(sample_list)
        random_branches = {"itm": self.forward_itm, "mlm": self.forward_mlm,
                           "mpfc": self.forward_mpfc, "mvc": self.forward_mvc}
        if task not in random_branches:
            raise NotImplementedError(f"FashionViL has no forward branch for task '{task}' yet")
        return random_branches[task](sample_list, self.batch_generator())

    @staticmethod
    def batch_generator():
        """CPU generator for one batch's random choices: seeded from torch's global RNG
        (seeded and checkpointed per rank by the trainer, so resume is exact) XOR the rank,
        so that ranks draw differently even when their global RNGs agree."""
        seed = int(torch.randint(2**31, (1,)))
        return torch.Generator().manual_seed(seed ^ get_rank())

    def _head(self, task):
        head = getattr(self, f"{task}_head", None)
        if head is None:
            raise ValueError(
                f"task '{task}' has no head: it was not in {CONFIG_PREFIX}.training_tasks "
                f"({self.training_tasks}) when the model was built"
            )
        return head

    @staticmethod
    def _field(sample_list, name, task):
        value = sample_list.get(name)
        if value is None:
            raise ValueError(f"task '{task}' needs the batch field '{name}', which is missing")
        return value

    def forward_two_stream(self, sample_list):
        """ITC pre-training and XMR fine-tuning: late fusion of IE(v) and TE(w). The visual
        tokens come along for metrics that re-rank with ``itm_match_scores``."""
        visual_tokens, image_embedding = self.encode_image(sample_list["image"])
        _, text_embedding = self.encode_text(sample_list["input_ids"], sample_list["input_mask"])
        return {
            "image_embedding": image_embedding,
            "text_embedding": text_embedding,
            "visual_tokens": visual_tokens,
            "scale": self.embedding_norm.scale.detach(),
        }

    def itm_match_scores(self, input_ids, input_mask, visual_tokens):
        """How strongly the ITM head says each (text, image) pair matches: logit(match) -
        logit(no match) on FE([w; v]) [CLS], for re-ranking retrieval candidates.
        ``visual_tokens`` [P, N, H] as ``encode_image`` returns them."""
        logits = self._head("itm")(self.fuse(input_ids, input_mask, visual_tokens)[:, 0])
        return logits[:, 1] - logits[:, 0]

    def forward_itm(self, sample_list, generator):
        """ITM: FE([w; v]) [CLS] -> itm_head on the B matching pairs followed by B
        non-matching ones (50 % negatives, SPEC §2): each image with a hard negative text
        drawn from softmax(s^2 cos) of the ITC similarities of the local images against the
        texts of ALL ranks, excluding every text of the image's product (SPEC §9).

        Negatives are image -> text only: a text -> image negative would need other ranks'
        images (or their visual tokens with gradient); the text side of the similarity is
        gathered without gradient, as it is only used for sampling.
        """
        input_ids, input_mask = sample_list["input_ids"], sample_list["input_mask"]
        product_ids = self._field(sample_list, "id", "itm").view(-1).to(input_ids)
        visual_tokens, image_embedding = self.encode_image(sample_list["image"])
        with torch.no_grad():
            _, text_embedding = self.encode_text(input_ids, input_mask)
            ranks = torch.full_like(product_ids, get_rank())
            # all_gather_with_grad under no_grad = a plain gather (rank order).
            all_texts = all_gather_with_grad(
                torch.cat([input_ids, input_mask.to(input_ids), product_ids[:, None],
                           ranks[:, None]], 1)
            )
            all_text_embedding = all_gather_with_grad(text_embedding)
            length = input_ids.size(1)
            all_ids, all_mask = all_texts[:, :length], all_texts[:, length:2 * length]
            all_products, all_ranks = all_texts[:, -2], all_texts[:, -1]
            first_row = int((all_ranks < get_rank()).sum())
            positives = torch.arange(first_row, first_row + len(product_ids),
                                     device=input_ids.device)
            negatives = hard_negative_indices(
                image_embedding.detach() @ all_text_embedding.t(), positives, product_ids,
                all_products, generator,
            )
        pair_ids = torch.cat([input_ids, all_ids[negatives]])
        pair_mask = torch.cat([input_mask, all_mask[negatives].to(input_mask)])
        pair_visual = torch.cat([visual_tokens, visual_tokens])
        cls_output = self.fuse(pair_ids, pair_mask, pair_visual)[:, 0]
        batch = len(product_ids)
        labels = torch.cat([torch.ones(batch), torch.zeros(batch)]).long()
        return {"itm_logits": self._head("itm")(cls_output),
                "itm_labels": labels.to(input_ids.device)}

    def mlm_inputs(self, sample_list, generator):
        """(masked_input_ids, labels) [B, L] (labels -100 where not masked): the batch's
        ``masked_input_ids`` / ``lm_label_ids`` when the dataset provides them, else drawn
        here by whole-word masking (masking.py) of ``input_ids`` using ``word_ids``."""
        given = [name in sample_list for name in ("masked_input_ids", "lm_label_ids")]
        if all(given):
            return sample_list["masked_input_ids"], sample_list["lm_label_ids"]
        if any(given):
            raise ValueError("the batch has only one of masked_input_ids / lm_label_ids")
        input_ids, word_ids = sample_list["input_ids"], sample_list.get("word_ids")
        if word_ids is None:
            raise ValueError(
                "task 'mlm' needs the batch field 'word_ids' to draw whole-word masks (or "
                "dataset-made masked_input_ids + lm_label_ids)"
            )
        if self.mlm_token_ids is None:
            raise ValueError(
                "MLM masks are drawn in the model (the batch has no masked_input_ids / "
                "lm_label_ids) but the [MASK] id is unknown: set "
                f"{CONFIG_PREFIX}.bert.vocab_file, or {CONFIG_PREFIX}.heads.mlm.mask_token_id "
                "and special_token_ids"
            )
        mask_token_id, special_ids = self.mlm_token_ids
        mask_prob = float(self.config.get("heads", {}).get("mlm", {}).get("mask_prob", 0.15))
        rows = [
            whole_word_mask(ids, words, generator, mask_token_id=mask_token_id,
                            vocab_size=self.bert_config.vocab_size, special_ids=special_ids,
                            mask_prob=mask_prob)
            for ids, words in zip(input_ids.cpu(), word_ids.cpu())
        ]
        masked_input_ids = torch.stack([row[0] for row in rows]).to(input_ids.device)
        labels = torch.stack([row[1] for row in rows]).to(input_ids.device)
        return masked_input_ids, labels

    def forward_mlm(self, sample_list, generator):
        """MLM: FE([masked w; v]) -> the tied MLM head, evaluated at the masked text
        positions only (a [B, L, V] logit tensor would be ~7x larger for nothing).

        ``mlm_logits`` [M, V] and ``mlm_labels`` [M] list the M masked positions of the
        batch in row-major order.
        """
        masked_input_ids, labels = self.mlm_inputs(sample_list, generator)
        visual_tokens, _ = self.encode_image(sample_list["image"])
        sequence = self.fuse(masked_input_ids, sample_list["input_mask"], visual_tokens)
        masked = labels != IGNORE_INDEX
        text_outputs = sequence[:, : masked_input_ids.size(1)]
        return {"mlm_logits": self._head("mlm")(text_outputs[masked]),
                "mlm_labels": labels[masked]}

    def mpfc_patch_mask(self, sample_list, grid_shape, generator):
        """BoolTensor [B, h * w] (True = masked, row-major): the batch's ``patch_mask``
        when the dataset provides it, else block-wise masks drawn here (masking.py) with
        ``heads.mpfc.mask_ratio`` (default the paper's 0.25)."""
        batch, (grid_h, grid_w) = len(sample_list["image"]), grid_shape
        patch_mask = sample_list.get("patch_mask")
        if patch_mask is not None:
            if tuple(patch_mask.shape) != (batch, grid_h * grid_w):
                raise ValueError(
                    f"patch_mask has shape {tuple(patch_mask.shape)}, expected "
                    f"({batch}, {grid_h * grid_w}) for the {grid_h}x{grid_w} image grid"
                )
            return patch_mask.bool()
        ratio = float(self.config.heads.mpfc.get("mask_ratio", 0.25))
        masks = [block_patch_mask(grid_h, grid_w, generator, mask_ratio=ratio)
                 for _ in range(batch)]
        return torch.stack(masks).to(sample_list["image"].device)

    def mpfc_targets(self, image):
        """Code ids [B, N] of the frozen image tokenizer for the full images, computed in
        fp32 (outside autocast) from the tokenizer's [-1, 1] input: the dataset's
        normalisation (``heads.mpfc.image_mean`` / ``image_std``) is undone first."""
        mpfc = self.config.heads.mpfc
        tokenizer = self.image_tokenizer.to(image.device)
        with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
            tokenizer_input = to_tokenizer_input(
                image.float(), list(mpfc.image_mean), list(mpfc.image_std)
            )
            return tokenizer.tokenize(tokenizer_input)

    def forward_mpfc(self, sample_list, generator):
        """MPFC: FE([w; v_masked]) -> mpfc_head on the visual positions; the targets are
        the tokenizer's codes of the full image at the masked patches (-100 elsewhere).

        As in the authors' code, patches are zeroed AFTER the ConvNet (SPEC §9), which
        therefore sees the whole image: its receptive fields overlap, so the features of
        unmasked neighbours still carry information about a masked patch (a leak; masking
        pixels before the ConvNet would avoid it but feed the ConvNet images with holes)."""
        image = sample_list["image"]
        grid_shape = (grid_side(image.size(2)), grid_side(image.size(3)))
        patch_mask = self.mpfc_patch_mask(sample_list, grid_shape, generator)
        codes = self.mpfc_targets(image)
        if codes.shape != patch_mask.shape:
            raise ValueError(
                f"the image tokenizer gives {codes.shape[1]} codes per image but the image "
                f"encoder a {grid_shape[0]}x{grid_shape[1]} grid for images of "
                f"{tuple(image.shape[2:])} px"
            )
        grid = self.image_grid_features(image).masked_fill(patch_mask[..., None], 0.0)
        visual_tokens = self.visual_projection(grid)
        input_ids = sample_list["input_ids"]
        sequence = self.fuse(input_ids, sample_list["input_mask"], visual_tokens)
        return {"mpfc_logits": self._head("mpfc")(sequence[:, input_ids.size(1):]),
                "mpfc_labels": codes.masked_fill(~patch_mask, IGNORE_INDEX)}

    def forward_mvc(self, sample_list, generator):
        """MVC: the composed embedding g(mean FE([w; view d])) of the text and ``image``
        against the image embedding g(IE(view v)) of ``image_view2`` (the InfoNCE is in
        losses.py). While training, ``heads.mvc.token_drop`` (default 0.25) of the text and
        of the visual tokens of each row are dropped from attention (SPEC §9)."""
        image = sample_list["image"]
        view = self._field(sample_list, "image_view2", "mvc")
        input_ids, input_mask = sample_list["input_ids"], sample_list["input_mask"]
        text_mask, visual_mask = input_mask, None
        token_drop = float(self.config.get("heads", {}).get("mvc", {}).get("token_drop", 0.25))
        if self.training and token_drop > 0:
            num_visual = grid_side(image.size(2)) * grid_side(image.size(3))
            text_mask = drop_tokens_at_random(input_mask, token_drop, generator)
            visual_mask = drop_tokens_at_random(
                input_mask.new_ones(len(image), num_visual), token_drop, generator
            )
        _, view_embedding = self.encode_image(view)
        return {"composed_embedding": self.compose(input_ids, text_mask, image, visual_mask),
                "view_embedding": view_embedding}

    def forward_pac(self, sample_list):
        """PAC: the one cosine classifier ``pac_head`` on the pooled image embedding and on
        the pooled text embedding (two-stream); multi-hot labels from the batch."""
        labels = self._field(sample_list, "attribute_labels", "pac")
        head = self._head("pac")
        if labels.dim() != 2 or labels.size(1) != head.weight.size(0):
            raise ValueError(
                f"attribute_labels have shape {tuple(labels.shape)}, expected [batch, "
                f"{head.weight.size(0)}] ({CONFIG_PREFIX}.heads.pac.num_attributes)"
            )
        _, image_embedding = self.encode_image(sample_list["image"])
        _, text_embedding = self.encode_text(sample_list["input_ids"], sample_list["input_mask"])
        return {"pac_image_logits": head(image_embedding),
                "pac_text_logits": head(text_embedding),
                "pac_labels": labels.float()}

    def forward_scr(self, sample_list):
        """SCR ((sub)category recognition): FE([w; v]) [CLS] -> scr_head -> ``scores`` [B, C]
        (single stream, SPEC §3); the classification loss takes ``sample_list.targets``."""
        visual_tokens, _ = self.encode_image(sample_list["image"])
        sequence = self.fuse(sample_list["input_ids"], sample_list["input_mask"], visual_tokens)
        return {"scores": self._head("scr")(sequence[:, 0])}

    def forward_tgir(self, sample_list):
        """TGIR (SPEC §3, early-fusion two-stream): the composed embedding of the
        modification text and the reference ``image``, g(mean FE([w; d])), against image
        embeddings IE(v).

        Training batches carry ``target_image``: -> ``composed_embedding`` and
        ``target_embedding`` (the fashionvil_tgir loss's pairs). Evaluation rows are queries
        (``is_query`` 1: composed embedding) or gallery images (image embedding); each row
        gets both keys the metric collects, zeros in the one its kind does not use (only
        the needed side is computed), and no ``target_embedding``, so the loss skips it."""
        input_ids, input_mask = sample_list["input_ids"], sample_list["input_mask"]
        image = sample_list["image"]
        if "target_image" in sample_list:
            _, target_embedding = self.encode_image(sample_list["target_image"])
            return {"composed_embedding": self.compose(input_ids, input_mask, image),
                    "target_embedding": target_embedding}
        is_query = self._field(sample_list, "is_query", "tgir").view(-1).bool()
        composed = self._embed_rows(
            is_query, lambda rows: self.compose(input_ids[rows], input_mask[rows], image[rows]))
        gallery = self._embed_rows(~is_query, lambda rows: self.encode_image(image[rows])[1])
        return {"composed_embedding": composed, "image_embedding": gallery}

    def _embed_rows(self, rows, embed):
        """[B, D] embeddings: ``embed(rows)`` at the rows where the bool mask ``rows`` [B]
        is set, zeros elsewhere (nothing is computed for an empty selection)."""
        width = self.image_projection.out_features
        if not rows.any():
            return torch.zeros(len(rows), width, device=rows.device)
        selected = embed(rows)
        embeddings = selected.new_zeros(len(rows), width)
        embeddings[rows] = selected
        return embeddings

    def ocir_item_features(self, images, input_ids=None, input_mask=None):
        """FashionViL features [N, D] of N Polyvore items: the image embedding IE(v), plus
        the text embedding TE(w) of the item's title/description with heads.ocir.use_text."""
        _, features = self.encode_image(images)
        if self._head("ocir").use_text:
            features = features + self.encode_text(input_ids, input_mask)[1]
        return features

    def forward_ocir(self, sample_list):
        """OCIR (SPEC §3): ``outfit_embedding`` = the outfit's items (``outfit_images``
        [B, M, 3, H, W] where ``outfit_mask``) in the subspaces conditioned on the target
        ``category``, pooled by ocir_head.outfit; ``item_embedding`` = ``item_image`` (where
        ``has_item``: the blank when training, the candidate on gallery rows) in its own
        category's subspace. All images of the batch go through the encoders at once; rows
        without an outfit (gallery) or without an item (queries) get zeros on that side."""
        head = self._head("ocir")
        category = self._field(sample_list, "category", "ocir").view(-1).long()
        outfit_mask = self._field(sample_list, "outfit_mask", "ocir").bool()
        outfit_categories = self._field(sample_list, "outfit_categories", "ocir").long()
        has_item = self._field(sample_list, "has_item", "ocir").view(-1).bool()
        head.check_categories(category, outfit_categories[outfit_mask])
        images = torch.cat([self._field(sample_list, "outfit_images", "ocir")[outfit_mask],
                            self._field(sample_list, "item_image", "ocir")[has_item]])
        texts = {}
        if head.use_text:
            texts = {key: torch.cat([
                self._field(sample_list, f"outfit_{key}", "ocir")[outfit_mask],
                self._field(sample_list, f"item_{key}", "ocir")[has_item],
            ]) for key in ("input_ids", "input_mask")}
        features = self.ocir_item_features(images, **texts)
        num_outfit_items = int(outfit_mask.sum())
        outfit_features = features.new_zeros(*outfit_mask.shape, features.size(-1))
        outfit_features[outfit_mask] = features[:num_outfit_items]

        def embed_outfits(rows):
            return self.embedding_norm(head.outfit(
                outfit_features[rows], outfit_categories[rows], outfit_mask[rows], category[rows]))

        def embed_items(rows):
            return self.embedding_norm(head.item(features[num_outfit_items:], category[rows]))

        return {"outfit_embedding": self._embed_rows(outfit_mask.any(1), embed_outfits),
                "item_embedding": self._embed_rows(has_item, embed_items)}

    # --------------------------------------------------------------- optimizer
    def get_optimizer_parameters(self, config):
        """Param groups (called by MMF with the global config): the transformer at the
        base lr, everything else (image encoder, visual projection, projections, scale,
        task heads) at lr * lr_multiplier; no weight decay on biases, LayerNorm and
        scalars (the scales)."""
        params = config.get("optimizer", {}).get("params", {})
        if params.get("lr") is None:
            raise ValueError("get_optimizer_parameters needs optimizer.params.lr in the config")
        lr, weight_decay = params["lr"], params.get("weight_decay", 0.0)
        multiplier = self.config.get("lr_multiplier", 20)

        no_decay = {id(p) for p in self.parameters() if p.ndim == 0}
        for module in self.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if name == "bias" or isinstance(module, nn.LayerNorm):
                    no_decay.add(id(parameter))
        transformer = {id(p) for p in [*self.embeddings.parameters(), *self.encoder.parameters()]}

        groups = {}  # (part, decays) -> param group
        for part, part_lr in (("transformer", lr), ("heads", lr * multiplier)):
            groups[(part, True)] = {"name": part, "params": [], "lr": part_lr,
                                    "weight_decay": weight_decay}
            groups[(part, False)] = {"name": f"{part}_no_decay", "params": [], "lr": part_lr,
                                     "weight_decay": 0.0}
        for parameter in self.parameters():  # tied weights are listed once
            if parameter.requires_grad:
                part = "transformer" if id(parameter) in transformer else "heads"
                groups[(part, id(parameter) not in no_decay)]["params"].append(parameter)
        return [group for group in groups.values() if group["params"]]
