"""The ``fashionvil`` model's settings: ``model_config.fashionvil`` merged onto its defaults
file (``configs/models/fashionvil/defaults.yaml``, the one place defaults live), resolved
and checked once, before any weight is built. Errors name the config key to set.

Checks that need a loaded asset (a pretrained BERT's vocabulary, the image tokenizer's
grid) are made where the asset is loaded, in ``model.py``.
"""
import json
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from mmf.common.registry import registry
from omegaconf import OmegaConf

from mmf_fashionvil import CONFIGS_DIR
from mmf_fashionvil.data.polyvore.dataset import NUM_CATEGORIES_KEY
from mmf_fashionvil.data.pretraining.dataset import NUM_ATTRIBUTES_KEY
from mmf_fashionvil.tasks import KNOWN_TASKS, parse_task_names

DEFAULTS_YAML = os.path.join(CONFIGS_DIR, "models", "fashionvil", "defaults.yaml")
CONFIG_PREFIX = "model_config.fashionvil"
# BertConfig fields that model_config.fashionvil.bert may set (without a pretrained checkpoint).
BERT_ARCHITECTURE_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "initializer_range",
)


def read_vocab_size(vocab_file):
    """Number of tokens of a WordPiece vocab.txt (one token per line)."""
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"{CONFIG_PREFIX}.bert.vocab_file: {vocab_file} does not exist")
    with open(vocab_file, encoding="utf-8") as f:
        return len(f.read().splitlines())


@dataclass(frozen=True)
class ImageEncoderSettings:
    arch: str
    pretrained: Optional[str]  # None | "imagenet" | a state dict file
    image_size: int  # largest input side: sets the number of visual positions
    width_base: int  # resnet_tiny only


@dataclass(frozen=True)
class BertSettings:
    pretrained: Optional[str]  # a local directory or hub name, else random init
    vocab_file: Optional[str]
    architecture: dict  # BertConfig fields, used without `pretrained`


@dataclass(frozen=True)
class HeadSettings:
    """What the task heads and forward branches read (SPEC §2, §3); the fields of a task
    that is not trained are not checked."""
    itm_rerank_top_k: int
    mpfc_tokenizer_checkpoint: Optional[str]
    mpfc_num_codes: Optional[int]
    mpfc_mask_ratio: float
    mvc_token_drop: float
    pac_num_attributes: Optional[int]
    pac_initial_logit_scale: float
    scr_num_classes: Optional[int]
    ocir_num_categories: Optional[int]
    ocir_num_subspaces: int
    ocir_use_text: bool


@dataclass(frozen=True)
class FashionViLSettings:
    training_tasks: Tuple[str, ...]
    evaluation_task: Optional[str]
    image_encoder: ImageEncoderSettings
    bert: BertSettings
    embedding_dim: Optional[int]  # None: no f / g projection (the transformer width)
    initial_scale: float
    lr_multiplier: float
    heads: HeadSettings

    @classmethod
    def from_config(cls, config):
        # Interpolations (e.g. ${env.data_dir}) resolve against the config's own root first.
        given = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) \
            else config
        config = OmegaConf.merge(OmegaConf.load(DEFAULTS_YAML).model_config.fashionvil, given)
        tasks = tuple(parse_task_names(config.training_tasks, f"{CONFIG_PREFIX}.training_tasks",
                                       known=KNOWN_TASKS))
        evaluation_task = config.evaluation_task
        if evaluation_task is not None and evaluation_task not in KNOWN_TASKS:
            raise ValueError(f"{CONFIG_PREFIX}.evaluation_task={evaluation_task}: expected one "
                             f"of {KNOWN_TASKS}")
        image = config.image_encoder
        bert = config.bert
        architecture = {k: bert[k] for k in BERT_ARCHITECTURE_KEYS if bert.get(k) is not None}
        return cls(
            training_tasks=tasks,
            evaluation_task=evaluation_task,
            image_encoder=ImageEncoderSettings(
                image.arch, image.pretrained, int(image.image_size), int(image.width_base)),
            bert=BertSettings(bert.pretrained, bert.vocab_file, architecture),
            embedding_dim=_embedding_dim(config.embedding_dim),
            initial_scale=float(config.initial_scale),
            lr_multiplier=float(config.lr_multiplier),
            heads=_head_settings(config.heads, tasks),
        )


def _embedding_dim(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{CONFIG_PREFIX}.embedding_dim={value!r}: expected a positive "
                         "integer (the size of the f / g projections) or null (no projection)")
    return value


def _head_settings(heads, tasks):
    mpfc = heads.mpfc
    if "mpfc" in tasks and mpfc.tokenizer_checkpoint is None:
        raise ValueError(
            f"training task 'mpfc' needs {CONFIG_PREFIX}.heads.mpfc.tokenizer_checkpoint: the "
            "checkpoint of a trained image tokenizer. Train one with `mmf_run config=<tokenizer "
            "config> model=fashionvil_image_tokenizer dataset=fashion_pretraining "
            "training.trainer=fashionvil_trainer env.save_dir=<dir>` (dataset images "
            "normalised with mean = std = 0.5, see mmf_fashionvil/modeling/image_tokenizer.py) "
            "and set the key to <dir>/best.ckpt or <dir>/current.ckpt"
        )
    scr_num_classes = heads.scr.num_classes
    if "scr" in tasks and scr_num_classes is None:
        raise ValueError(
            f"training task 'scr' needs {CONFIG_PREFIX}.heads.scr.num_classes (48 "
            "categories / 121 subcategories on FashionGen)"
        )
    return HeadSettings(
        itm_rerank_top_k=int(heads.itm.rerank_top_k or 0),
        mpfc_tokenizer_checkpoint=mpfc.tokenizer_checkpoint,
        mpfc_num_codes=None if mpfc.num_codes is None else int(mpfc.num_codes),
        mpfc_mask_ratio=float(mpfc.mask_ratio),
        mvc_token_drop=float(heads.mvc.token_drop),
        pac_num_attributes=_num_attributes(heads.pac) if "pac" in tasks else None,
        pac_initial_logit_scale=float(heads.pac.initial_logit_scale),
        scr_num_classes=None if scr_num_classes is None else int(scr_num_classes),
        ocir_num_categories=(ocir_num_categories(heads.ocir.num_categories,
                                                 f"{CONFIG_PREFIX}.heads.ocir.num_categories")
                             if "ocir" in tasks else None),
        ocir_num_subspaces=int(heads.ocir.num_subspaces),
        ocir_use_text=bool(heads.ocir.use_text),
    )


def _num_attributes(pac):
    """The PAC classifier size: ``heads.pac.num_attributes``, else the length of the
    vocabulary in ``heads.pac.attributes_file`` (the attribute miner's attributes.json), else
    the class count of the labels the fashion_pretraining dataset built (registered by it:
    the info files' ids or the miner's), which a configured size is checked against."""
    from_data = registry.get(NUM_ATTRIBUTES_KEY, no_warning=True)
    if pac.num_attributes is not None:
        configured, key = int(pac.num_attributes), "num_attributes"
    elif pac.attributes_file is not None:
        path = str(pac.attributes_file)
        if not os.path.isfile(path):
            raise ValueError(
                f"{CONFIG_PREFIX}.heads.pac.attributes_file={path} does not exist: run "
                "`python -m mmf_fashionvil.tools.attributes --data-dir <data_dir>` first"
            )
        with open(path, encoding="utf-8") as handle:
            configured, key = len(json.load(handle)["vocabulary"]), f"attributes_file={path}"
    elif from_data is not None:
        return from_data[1]
    else:
        raise ValueError(
            f"training task 'pac' needs {CONFIG_PREFIX}.heads.pac.num_attributes, or "
            "heads.pac.attributes_file (the attribute miner's attributes.json), or a "
            "fashion_pretraining dataset with PAC labels"
        )
    if from_data is not None and from_data[1] != configured:
        source, count = from_data
        raise ValueError(
            f"{CONFIG_PREFIX}.heads.pac.{key} gives {configured} classes but the "
            f"fashion_pretraining dataset's PAC labels ({source}) have {count}: set "
            "heads.pac.num_attributes and heads.pac.attributes_file to null (the dataset's "
            "count), or dataset_config.fashion_pretraining.attribute_labels to the other source"
        )
    return configured


def ocir_num_categories(configured, key):
    """The number of OCIR categories set at config ``key`` (``configured``); checked against
    the number of dense categories the polyvore_ocir builder registered (when a dataset was
    built), which it defaults to."""
    from_data = registry.get(NUM_CATEGORIES_KEY, no_warning=True)
    if configured is None and from_data is None:
        raise ValueError(
            f"OCIR needs {key} (the number of distinct category_ids in "
            "polyvore_item_metadata.json)"
        )
    if configured is not None and from_data is not None and int(configured) != from_data:
        raise ValueError(
            f"{key}={configured} but the polyvore_ocir dataset's metadata has {from_data} "
            f"distinct category_ids: set it to {from_data} (or null to take the dataset's)"
        )
    return int(configured if configured is not None else from_data)
