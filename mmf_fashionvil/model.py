"""FashionViL (Han et al., ECCV 2022) as an MMF model, registered as ``fashionvil``.

One ConvNet image encoder (IE) and one BERT transformer whose weights serve both as the
text encoder (TE: text tokens only) and as the fusion encoder (FE: text tokens followed by
visual tokens). See SPEC §1 and §9. The three ways to use it:

1. single-stream (early fusion): ``fuse(input_ids, input_mask, visual_tokens)``;
2. two-stream (late fusion): ``encode_image(image)`` and ``encode_text(input_ids, input_mask)``;
3. early-fusion two-stream: ``compose(input_ids, input_mask, image)`` against
   ``encode_image(other_image)``.
"""
import copy
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

DEFAULTS_YAML = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "configs", "models", "fashionvil", "defaults.yaml"
)
PRETRAINING_TASKS = ("itc", "itm", "mlm", "mpfc", "mvc", "pac")
DOWNSTREAM_TASKS = ("xmr", "tgir", "scr", "ocir")
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


def read_vocab_size(vocab_file):
    """Number of tokens of a WordPiece vocab.txt (one token per line)."""
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(
            f"model_config.fashionvil.bert.vocab_file: {vocab_file} does not exist"
        )
    with open(vocab_file, encoding="utf-8") as f:
        return len(f.read().splitlines())


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
        self._build_task_heads(width, embedding_dim)

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
        if "itm" in tasks:
            self.itm_head = nn.Linear(width, 2)  # on the FE [CLS] output
        if "mlm" in tasks:
            self.mlm_head = BertOnlyMLMHead(self.bert_config)
        if "mpfc" in tasks:
            self.mpfc_head = nn.Linear(width, heads.mpfc.num_codes)  # on FE visual outputs
        if "pac" in tasks:
            num_attributes = heads.get("pac", {}).get("num_attributes")
            if num_attributes is None:
                raise ValueError(
                    "training task 'pac' needs model_config.fashionvil.heads.pac.num_attributes"
                    " (the size of the mined attribute vocabulary)"
                )
            self.pac_head = CosineClassifier(
                embedding_dim, num_attributes, heads.pac.get("initial_logit_scale", 10.0)
            )

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
        """The batch's task: ``sample_list.task`` if present, else the first training task."""
        task = sample_list.get("task")
        if task is None:
            return self.training_tasks[0]
        if isinstance(task, (list, tuple)):
            if len(set(task)) != 1:
                raise ValueError(f"a batch must hold one task, got {sorted(set(task))}")
            task = task[0]
        return task

    def forward(self, sample_list):
        task = self.task_of(sample_list)
        if task in ("itc", "xmr"):
            return self.forward_two_stream(sample_list)
        raise NotImplementedError(f"FashionViL has no forward branch for task '{task}' yet")

    def forward_two_stream(self, sample_list):
        """ITC pre-training and XMR fine-tuning: late fusion of IE(v) and TE(w)."""
        _, image_embedding = self.encode_image(sample_list["image"])
        _, text_embedding = self.encode_text(sample_list["input_ids"], sample_list["input_mask"])
        return {
            "image_embedding": image_embedding,
            "text_embedding": text_embedding,
            "scale": self.embedding_norm.scale.detach(),
        }

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
