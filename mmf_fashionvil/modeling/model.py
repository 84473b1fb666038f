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

Settings come resolved and checked from ``config.py``; the layers from ``layers.py``.

Who draws the random choices: MLM masks come with the batch (``masked_input_ids`` +
``lm_label_ids``, drawn per item by the text processor, see ``data/processors.py``). MPFC
patch masks (block-wise), ITM hard negatives and MVC's dropped tokens are drawn here
(``masking.py``), from one ``torch.Generator`` per batch on the batch's device
(``rng.batch_generator``; seeded by the trainer from (seed, update, micro-batch)), with
tensor operations only: a training step never reads a value back from the GPU.
"""
import copy
import os

import torch
from mmf.common.registry import registry
from mmf.models.base_model import BaseModel
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (
    BertEncoder,
    BertOnlyMLMHead,
    BertPredictionHeadTransform,
)

from mmf_fashionvil import assets
from mmf_fashionvil.data.processors import registered_image_normalization
from mmf_fashionvil.distributed import all_gather_with_grad, get_rank
from mmf_fashionvil.modeling.config import (
    CONFIG_PREFIX,
    DEFAULTS_YAML,
    FashionViLSettings,
    read_vocab_size,
)
from mmf_fashionvil.modeling.image_tokenizer import load_image_tokenizer, to_tokenizer_input
from mmf_fashionvil.modeling.layers import (
    CategorySubspaceHead,
    CosineClassifier,
    FashionViLEmbeddings,
    GridImageEncoder,
    ScaledL2Norm,
    drop_tokens_at_random,
    grid_side,
    masked_mean,
)
from mmf_fashionvil.modeling.masking import IGNORE_INDEX, block_patch_mask, hard_negative_indices
from mmf_fashionvil.rng import batch_generator

TASKS_WITH_HEADS = ("itm", "mlm", "mpfc", "pac", "scr", "ocir")


class BatchIndices:
    """Named index tensors of a batch that are not batch-sized (a SampleList field must be);
    ``SampleList.to`` moves them with the batch."""

    def __init__(self, **tensors):
        self.__dict__.update(tensors)

    def to(self, device, non_blocking=False):
        return BatchIndices(**{name: tensor.to(device, non_blocking=non_blocking)
                               for name, tensor in vars(self).items()})


@registry.register_model("fashionvil")
class FashionViL(BaseModel):
    """FashionViL: ResNet grid image encoder + one BERT used as text and fusion encoder."""

    # What checkpoint.resume_pretrained must load in full by default (training/checkpoints.py
    # RequiredWeights): the backbone and the transformer; projections and heads may be new.
    pretrained_core_prefixes = ("image_encoder", "visual_projection", "embeddings", "encoder")

    @classmethod
    def config_path(cls):
        return DEFAULTS_YAML

    # ------------------------------------------------------------------ building
    def build(self):
        self.settings = settings = FashionViLSettings.from_config(self.config)
        self.training_tasks = list(settings.training_tasks)
        image = settings.image_encoder
        self.image_encoder = GridImageEncoder(image.arch, image.width_base)
        pretrained_bert = (assets.load_pretrained_bert(settings.bert.pretrained)
                           if settings.bert.pretrained is not None else None)
        self.bert_config = self._bert_config(pretrained_bert)
        width = self.bert_config.hidden_size
        # embedding_dim null: no f / g projection, the joint space is the transformer width
        # (the authors' code); else linear maps into an embedding_dim space.
        self.embedding_dim = embedding_dim = settings.embedding_dim or width

        self.visual_projection = nn.Linear(self.image_encoder.out_channels, width)
        self.embeddings = FashionViLEmbeddings(self.bert_config, grid_side(image.image_size) ** 2)
        self.encoder = BertEncoder(self.bert_config)
        if settings.embedding_dim is None:
            self.image_projection, self.text_projection = nn.Identity(), nn.Identity()
        else:
            self.image_projection = nn.Linear(width, embedding_dim)  # g (image, composed side)
            self.text_projection = nn.Linear(width, embedding_dim)  # f
        self.embedding_norm = ScaledL2Norm(settings.initial_scale)
        # The frozen MPFC target tokenizer is kept outside the module tree (set past
        # nn.Module.__setattr__): it is not trained, so it stays out of the parameters
        # (optimizer groups, DDP), the state dict (checkpoints) and .to()/.train();
        # ``mpfc_targets`` moves it to the images' device and it is always in eval mode.
        tokenizer = self._load_image_tokenizer() if "mpfc" in self.training_tasks else None
        object.__setattr__(self, "image_tokenizer", tokenizer)
        self._build_task_heads(width, embedding_dim)

        for name, module in self.named_children():
            if name != "image_encoder":
                module.apply(self._init_bert_style)
        if hasattr(self, "mlm_head"):
            self._tie_mlm_head()
        if pretrained_bert is not None:
            self.embeddings.copy_from_bert(pretrained_bert.embeddings)
            self.encoder.load_state_dict(pretrained_bert.encoder.state_dict())
            if hasattr(self, "pooler") and pretrained_bert.pooler is not None:
                self.pooler[0].load_state_dict(pretrained_bert.pooler.dense.state_dict())
            if hasattr(self, "mlm_head"):
                self._copy_pretrained_mlm_head(settings.bert.pretrained)
        if image.pretrained is not None:
            state_dict = assets.load_resnet_state_dict(image.arch, image.pretrained)
            self.image_encoder.load_torchvision_state_dict(
                state_dict, f"image_encoder.pretrained={image.pretrained}"
            )

    def _bert_config(self, pretrained_bert):
        """The checkpoint's architecture when one is loaded, else the configured one
        (vocab_size = lines of bert.vocab_file when that is set)."""
        bert = self.settings.bert
        if pretrained_bert is not None:
            bert_config = copy.deepcopy(pretrained_bert.config)
            if bert.vocab_file is not None:
                vocab_size = read_vocab_size(bert.vocab_file)
                if vocab_size != bert_config.vocab_size:
                    raise ValueError(
                        f"bert.vocab_file {bert.vocab_file} has {vocab_size} tokens but the "
                        f"pretrained BERT {bert.pretrained} has vocab_size "
                        f"{bert_config.vocab_size}"
                    )
        else:
            architecture = dict(bert.architecture)
            if bert.vocab_file is not None:
                architecture["vocab_size"] = read_vocab_size(bert.vocab_file)
            bert_config = BertConfig(**architecture)
        # Our masks are boolean [B, 1, 1, L] (True = attend), the form SDPA takes.
        bert_config._attn_implementation = "sdpa"
        return bert_config

    def _build_task_heads(self, width, embedding_dim):
        """Heads exist only for the tasks being trained."""
        tasks, heads = set(self.training_tasks), self.settings.heads
        itm_kept = "itm" in tasks or heads.itm_rerank_top_k > 0
        if itm_kept or "scr" in tasks:
            # BERT's pooler (dense + tanh on the FE [CLS] output), shared by ITM and SCR as
            # in the authors' code; initialised from the pretrained BERT's pooler.
            self.pooler = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        if itm_kept:
            self.itm_head = nn.Linear(width, 2)  # on the pooled FE [CLS] output
            if "itm" not in tasks:
                # Kept for re-ranking only (weights from the pre-trained checkpoint): frozen,
                # so fine-tuning leaves it as pre-trained and DDP expects no gradient for it.
                self.itm_head.requires_grad_(False)
                if "scr" not in tasks:
                    self.pooler.requires_grad_(False)
        if "mlm" in tasks:
            self.mlm_head = BertOnlyMLMHead(self.bert_config)
        if "mpfc" in tasks:
            # on FE visual outputs, one class per tokenizer code
            self.mpfc_head = self._transform_and_linear(self.image_tokenizer.codebook_size)
        if "pac" in tasks:
            self.pac_head = CosineClassifier(
                embedding_dim, heads.pac_num_attributes, heads.pac_initial_logit_scale
            )
        if "scr" in tasks:
            self.scr_head = self._transform_and_linear(heads.scr_num_classes)
        if "ocir" in tasks:
            self.ocir_head = CategorySubspaceHead(
                embedding_dim, heads.ocir_num_categories, heads.ocir_num_subspaces,
                heads.ocir_use_text,
            )

    def _transform_and_linear(self, num_classes):
        """BERT's prediction-head transform (dense, activation, LayerNorm) then a linear
        classifier: the authors' MPFC and classification (SCR) heads."""
        return nn.Sequential(BertPredictionHeadTransform(self.bert_config),
                             nn.Linear(self.bert_config.hidden_size, int(num_classes)))

    def _pooled(self, sequence):
        """The pooled FE [CLS] output (ITM, SCR)."""
        return self.pooler(sequence[:, 0])

    def _load_image_tokenizer(self):
        """The frozen VQ-VAE whose codes are the MPFC targets (SPEC §2, §9), checked against
        ``heads.mpfc.num_codes`` and the image encoder's grid."""
        heads, key = self.settings.heads, f"{CONFIG_PREFIX}.heads.mpfc.tokenizer_checkpoint"
        checkpoint = heads.mpfc_tokenizer_checkpoint
        tokenizer = load_image_tokenizer(checkpoint).requires_grad_(False)
        source = f"{key}={checkpoint}"
        if heads.mpfc_num_codes is not None and tokenizer.codebook_size != heads.mpfc_num_codes:
            raise ValueError(
                f"{source} has {tokenizer.codebook_size} codes but "
                f"{CONFIG_PREFIX}.heads.mpfc.num_codes={heads.mpfc_num_codes}: set them equal"
            )
        image_size = self.settings.image_encoder.image_size
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

    @torch.no_grad()
    def _copy_pretrained_mlm_head(self, name_or_path):
        """The pretrained BERT's own MLM head (transform and output bias), as the authors'
        code starts from, where its checkpoint has one (a sentence encoder has none: the
        head then stays freshly initialised); the decoder stays tied to the word embeddings."""
        from transformers import BertForMaskedLM

        pretrained, info = BertForMaskedLM.from_pretrained(
            os.path.expanduser(str(name_or_path)), output_loading_info=True)
        if any(key.startswith("cls.") for key in info["missing_keys"]):
            return
        head, ours = pretrained.cls.predictions, self.mlm_head.predictions
        ours.transform.load_state_dict(head.transform.state_dict())
        ours.bias.copy_(head.bias)

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
            evaluation_task = self.settings.evaluation_task
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
        if task == "mlm":
            return self.forward_mlm(sample_list)
        random_branches = {"itm": self.forward_itm, "mpfc": self.forward_mpfc,
                           "mvc": self.forward_mvc}
        if task not in random_branches:
            raise NotImplementedError(f"FashionViL has no forward branch for task '{task}' yet")
        generator = batch_generator(sample_list["image"].device, sample_list.get("random_seed"))
        return random_branches[task](sample_list, generator)

    def _head(self, task):
        head = getattr(self, f"{task}_head", None)
        if head is None:
            raise ValueError(
                f"task '{task}' has no head: it was not in {CONFIG_PREFIX}.training_tasks "
                f"({self.training_tasks}) when the model was built"
            )
        return head

    @staticmethod
    def _field(sample_list, name, task, hint=None):
        value = sample_list.get(name)
        if value is None:
            raise ValueError(f"task '{task}' needs the batch field '{name}', which is missing"
                             + (f": {hint}" if hint else ""))
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
        logits = self._head("itm")(self._pooled(self.fuse(input_ids, input_mask, visual_tokens)))
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
            # This rank's rows follow every row of the lower ranks (counted on the device).
            positives = ((all_ranks < get_rank()).sum()
                         + torch.arange(len(product_ids), device=input_ids.device))
            negatives = hard_negative_indices(
                image_embedding.detach() @ all_text_embedding.t(), positives, product_ids,
                all_products, generator,
            )
        pair_ids = torch.cat([input_ids, all_ids[negatives]])
        pair_mask = torch.cat([input_mask, all_mask[negatives].to(input_mask)])
        pair_visual = torch.cat([visual_tokens, visual_tokens])
        pooled = self._pooled(self.fuse(pair_ids, pair_mask, pair_visual))
        batch = len(product_ids)
        labels = (torch.arange(2 * batch, device=input_ids.device) < batch).long()
        return {"itm_logits": self._head("itm")(pooled),
                "itm_labels": labels}

    def forward_mlm(self, sample_list):
        """MLM: FE([masked w; v]) -> the tied MLM head at every text position. The
        whole-word masks come with the batch: ``masked_input_ids`` and ``lm_label_ids``
        (-100 where not masked), drawn by the text processor (its ``mlm_mask_prob``).

        ``mlm_logits`` [B, L, V] and ``mlm_labels`` [B, L] (-100 = not masked; the loss
        skips them). Selecting the masked positions first would save head compute but size
        a tensor from the data, which makes every step wait for the GPU (and torch.compile
        break its graph).
        """
        masked_input_ids = self._field(
            sample_list, "masked_input_ids", "mlm", "set mlm_mask_prob in the dataset's "
            "text_processor params, which then draws whole-word masks per item")
        labels = self._field(sample_list, "lm_label_ids", "mlm", "see masked_input_ids")
        visual_tokens, _ = self.encode_image(sample_list["image"])
        sequence = self.fuse(masked_input_ids, sample_list["input_mask"], visual_tokens)
        text_outputs = sequence[:, : masked_input_ids.size(1)]
        return {"mlm_logits": self._head("mlm")(text_outputs), "mlm_labels": labels}

    def mpfc_patch_mask(self, image, generator):
        """BoolTensor [B, h * w] (True = masked, row-major) of block-wise masks (masking.py)
        over the image encoder's grid, ``heads.mpfc.mask_ratio`` of the patches each."""
        grid_h, grid_w = grid_side(image.size(2)), grid_side(image.size(3))
        masks = block_patch_mask(grid_h, grid_w, generator, num_masks=len(image),
                                 mask_ratio=self.settings.heads.mpfc_mask_ratio)
        return masks.to(image.device)

    def mpfc_targets(self, image):
        """Code ids [B, N] of the frozen image tokenizer for the full images, computed in
        fp32 (outside autocast) from the tokenizer's [-1, 1] input: the normalisation of the
        dataset's image processor is undone first."""
        mean, std = registered_image_normalization()
        tokenizer = self.image_tokenizer.to(image.device)
        with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
            return tokenizer.tokenize(to_tokenizer_input(image.float(), mean, std))

    def forward_mpfc(self, sample_list, generator):
        """MPFC: FE([w; v_masked]) -> mpfc_head on the visual positions; the targets are
        the tokenizer's codes of the full image at the masked patches (-100 elsewhere).

        As in the authors' code, patches are zeroed AFTER the ConvNet (SPEC §9), which
        therefore sees the whole image: its receptive fields overlap, so the features of
        unmasked neighbours still carry information about a masked patch (a leak; masking
        pixels before the ConvNet would avoid it but feed the ConvNet images with holes)."""
        image = sample_list["image"]
        patch_mask = self.mpfc_patch_mask(image, generator)
        codes = self.mpfc_targets(image)
        if codes.shape != patch_mask.shape:
            raise ValueError(
                f"the image tokenizer gives {codes.shape[1]} codes per image but the image "
                f"encoder {patch_mask.shape[1]} grid patches for images of "
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
        losses.py). While training, ``heads.mvc.token_drop`` of the text and of the visual
        tokens of each row are dropped from attention (SPEC §9)."""
        image = sample_list["image"]
        view = self._field(sample_list, "image_view2", "mvc")
        input_ids, input_mask = sample_list["input_ids"], sample_list["input_mask"]
        text_mask, visual_mask = input_mask, None
        token_drop = self.settings.heads.mvc_token_drop
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
        """SCR ((sub)category recognition): pooled FE([w; v]) [CLS] -> scr_head -> ``scores``
        [B, C] (single stream, SPEC §3); the classification loss takes ``sample_list.targets``."""
        visual_tokens, _ = self.encode_image(sample_list["image"])
        sequence = self.fuse(sample_list["input_ids"], sample_list["input_mask"], visual_tokens)
        return {"scores": self._head("scr")(self._pooled(sequence))}

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
        batch = len(is_query)  # evaluation only: reading the rows back is fine here
        composed = self._embed_rows(
            is_query.nonzero().flatten(), batch,
            lambda rows: self.compose(input_ids[rows], input_mask[rows], image[rows]))
        gallery = self._embed_rows((~is_query).nonzero().flatten(), batch,
                                   lambda rows: self.encode_image(image[rows])[1])
        return {"composed_embedding": composed, "image_embedding": gallery}

    def _embed_rows(self, rows, num_rows, embed):
        """[num_rows, D] embeddings: ``embed(rows)`` at the row indices ``rows`` (LongTensor),
        zeros elsewhere (nothing is computed for an empty selection)."""
        if len(rows) == 0:
            return torch.zeros(num_rows, self.embedding_dim, device=rows.device)
        selected = embed(rows)
        return selected.new_zeros(num_rows, selected.size(-1)).index_copy(0, rows, selected)

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
        layout = sample_list.get("ocir_layout") or self.ocir_layout(sample_list)  # or direct call
        slots, outfit_rows, item_rows = layout.outfit_slots, layout.outfit_rows, layout.item_rows
        images = torch.cat([self._field(sample_list, "outfit_images", "ocir").flatten(0, 1)[slots],
                            self._field(sample_list, "item_image", "ocir")[item_rows]])
        texts = {}
        if head.use_text:
            texts = {key: torch.cat([
                self._field(sample_list, f"outfit_{key}", "ocir").flatten(0, 1)[slots],
                self._field(sample_list, f"item_{key}", "ocir")[item_rows],
            ]) for key in ("input_ids", "input_mask")}
        features = self.ocir_item_features(images, **texts)
        num_outfit_items = len(slots)
        outfit_features = features.new_zeros(outfit_mask.numel(), features.size(-1)).index_copy(
            0, slots, features[:num_outfit_items]).view(*outfit_mask.shape, -1)

        def embed_outfits(rows):
            return self.embedding_norm(head.outfit(
                outfit_features[rows], outfit_categories[rows], outfit_mask[rows], category[rows]))

        def embed_items(rows):
            return self.embedding_norm(head.item(features[num_outfit_items:], category[rows]))

        batch = len(category)
        return {"outfit_embedding": self._embed_rows(outfit_rows, batch, embed_outfits),
                "item_embedding": self._embed_rows(item_rows, batch, embed_items)}

    def ocir_layout(self, sample_list):
        """Where an OCIR batch's real items are, as index tensors read from its masks, after
        checking their categories against the head: ``outfit_slots`` (positions in the
        flattened [B * M] outfit slots), ``outfit_rows`` (rows with an outfit), ``item_rows``
        (rows with an item). Reads values: the trainer calls it on the host
        (:meth:`prepare_batch_on_host`), so that the forward never waits for the device."""
        outfit_mask = self._field(sample_list, "outfit_mask", "ocir").bool()
        has_item = self._field(sample_list, "has_item", "ocir").view(-1).bool()
        category = self._field(sample_list, "category", "ocir").view(-1).long()
        outfit_categories = self._field(sample_list, "outfit_categories", "ocir").long()
        self._head("ocir").check_categories(category, outfit_categories[outfit_mask])
        return BatchIndices(outfit_slots=outfit_mask.flatten().nonzero().flatten(),
                            outfit_rows=outfit_mask.any(1).nonzero().flatten(),
                            item_rows=has_item.nonzero().flatten())

    def prepare_batch_on_host(self, sample_list):
        """Adds the fields that depend on a batch's values while it is still on the host
        (the trainer calls it before moving the batch to the device): OCIR's layout."""
        if "outfit_mask" in sample_list and hasattr(self, "ocir_head"):
            sample_list.ocir_layout = self.ocir_layout(sample_list)

    # --------------------------------------------------------------- optimizer
    def get_optimizer_parameters(self, config):
        """Param groups (called by MMF with the global config): the transformer (and BERT's
        pooler) at the base lr, everything else (image encoder, visual projection,
        projections, scale, task heads) at lr * lr_multiplier; no weight decay on biases,
        LayerNorm and scalars (the scales)."""
        params = config.get("optimizer", {}).get("params", {})
        if params.get("lr") is None:
            raise ValueError("get_optimizer_parameters needs optimizer.params.lr in the config")
        lr, weight_decay = params["lr"], params.get("weight_decay", 0.0)
        multiplier = self.settings.lr_multiplier

        no_decay = {id(p) for p in self.parameters() if p.ndim == 0}
        for module in self.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if name == "bias" or isinstance(module, nn.LayerNorm):
                    no_decay.add(id(parameter))
        # BERT's pooler trains with the transformer, as in the authors' code.
        pooler = self.pooler.parameters() if hasattr(self, "pooler") else ()
        transformer = {id(p) for p in [*self.embeddings.parameters(), *self.encoder.parameters(),
                                       *pooler]}

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
