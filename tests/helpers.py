"""Plain helpers and constants shared by several test files (fixtures live in conftest.py).

Test modules import from here (``from helpers import ...``), never from one another or
from conftest; pytest puts this folder on sys.path."""
import json
import os
import socket
import subprocess
import sys

import torch
from omegaconf import OmegaConf

# ------------------------------------------------------------------ commands and paths
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMF_RUN = os.path.join(os.path.dirname(sys.executable), "mmf_run")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def run_command(command, timeout=600, env=None, cwd=REPO):
    """Runs a command line; returns (exit code, combined output)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    full_env.update(env or {})
    result = subprocess.run(
        command, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
    )
    return result.returncode, result.stdout


def free_port():
    """A TCP port nobody listens on now, for a test's own process group."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----------------------------------------------------------------------- mmf_run runs
def short_run_args(dataset, updates, evaluation_interval=None, checkpoint_interval=None,
                   warmup_steps=1):
    """The `mmf_run` overrides of a short CPU run of the fashionvil model on ``dataset``:
    ``updates`` updates of batch 8 without loader workers, a log every 2 updates, an
    evaluation and a checkpoint every ``evaluation_interval`` / ``checkpoint_interval``
    updates (default: once, at the end) and a schedule of ``warmup_steps`` warm-up steps
    over ``updates`` steps. The first two items are the model and the dataset."""
    if evaluation_interval is None:
        evaluation_interval = updates
    if checkpoint_interval is None:
        checkpoint_interval = updates
    return [
        "model=fashionvil", f"dataset={dataset}", f"training.max_updates={updates}",
        "training.batch_size=8", "training.num_workers=0", "training.log_interval=2",
        f"training.evaluation_interval={evaluation_interval}",
        f"training.checkpoint_interval={checkpoint_interval}",
        f"scheduler.params.num_warmup_steps={warmup_steps}",
        f"scheduler.params.num_training_steps={updates}",
    ]


def read_jsonl(path):
    """The records of a JSON-lines log (train_log.jsonl, eval_log.jsonl)."""
    with open(path) as f:
        return [json.loads(line) for line in f]


def final_metrics(save_dir, split):
    """The metrics of the last evaluation of ``split`` in a run's eval_log.jsonl."""
    records = [r for r in read_jsonl(os.path.join(save_dir, "eval_log.jsonl"))
               if r["split"] == split]
    assert records, f"no {split} evaluation logged"
    return records[-1]["metrics"]


# ------------------------------------------------------------------------- tiny model
VOCAB = 50
WIDTH = 32


def tiny_config(**overrides):
    """The fashionvil model config shrunk to a tiny ResNet (64 px) and a 2-layer BERT of
    width WIDTH over VOCAB tokens, without pretrained weights or losses."""
    from mmf_fashionvil.modeling.config import DEFAULTS_YAML

    config = OmegaConf.load(DEFAULTS_YAML).model_config.fashionvil
    tiny = {
        "image_encoder": {"arch": "resnet_tiny", "width_base": 8, "image_size": 64,
                          "pretrained": None},
        "bert": {"pretrained": None, "vocab_size": VOCAB, "hidden_size": WIDTH,
                 "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64},
        "embedding_dim": 16,
        "losses": [],
    }
    return OmegaConf.merge(config, tiny, overrides)


def build_model(config=None):
    """A seeded FashionViL model of ``config`` (default: tiny_config()), in eval mode."""
    from mmf_fashionvil.modeling.model import FashionViL

    torch.manual_seed(0)
    model = FashionViL(config if config is not None else tiny_config())
    model.build()
    return model.eval()


def text_batch():
    """Two texts, the second padded after 4 tokens."""
    input_ids = torch.tensor([[2, 11, 12, 13, 14, 15, 3], [2, 21, 22, 3, 0, 0, 0]])
    input_mask = (input_ids != 0).long()
    return input_ids, input_mask


def images(batch=2, size=64):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def save_tiny_image_tokenizer(path, image_size=64, codebook_size=12):
    """Writes a checkpoint as our trainer saves it ({"model", "config"}) of a tiny VQ-VAE
    with stride 32 (the ResNet grid's) whose codebook was seeded from encoded images, so
    that different patches get different codes. Returns the tokenizer."""
    from mmf_fashionvil.modeling.image_tokenizer import DEFAULTS_YAML as TOKENIZER_YAML
    from mmf_fashionvil.modeling.image_tokenizer import ImageTokenizer

    config = OmegaConf.merge(
        OmegaConf.load(TOKENIZER_YAML).model_config.fashionvil_image_tokenizer,
        {"image_size": image_size, "stride": 32, "base_channels": 4,
         "channel_multipliers": [1, 1, 1, 1, 1, 1], "num_res_blocks": 1,
         "bottleneck_attention": False, "latent_dim": 8, "codebook_size": codebook_size},
    )
    torch.manual_seed(0)
    tokenizer = ImageTokenizer(config)
    tokenizer.build()
    with torch.no_grad():
        tokenizer.quantize(tokenizer.encode(torch.randn(8, 3, image_size, image_size)),
                           update_codebook=True)
    container = {"model_config": {"fashionvil_image_tokenizer": OmegaConf.to_container(config)}}
    torch.save({"model": tokenizer.state_dict(), "config": container}, path)
    return tokenizer.eval()


# --------------------------------------------------------------------------- datasets
def default_dataset_config(builder_class):
    """The dataset config in ``builder_class``'s defaults file (its only entry)."""
    config = OmegaConf.load(builder_class.config_path()).dataset_config
    return config[list(config.keys())[0]]


def apply_image_size_and_overrides(config, resize, crop, overrides):
    """Makes both image processors of a dataset config resize to ``resize`` and crop to
    ``crop``, then applies ``overrides`` (dotted keys). Returns the config."""
    for key in ("train_image_processor", "eval_image_processor"):
        config.processors[key].params.resize = resize
        config.processors[key].params.crop = crop
    for key, value in overrides.items():
        OmegaConf.update(config, key, value)
    return config


def catalog_dataset_config(builder_class, catalog, **overrides):
    """The dataset config of ``builder_class`` on a catalog laid out as the synthetic one
    (vocab/vocab.txt), with 24-token texts and 64 px images cropped to 56, plus
    ``overrides`` (dotted keys)."""
    config = default_dataset_config(builder_class)
    config.data_dir = str(catalog)
    vocab = os.path.join(str(catalog), "vocab", "vocab.txt")
    config.processors.text_processor.params.vocab = vocab
    config.processors.text_processor.params.max_seq_length = 24
    return apply_image_size_and_overrides(config, 64, 56, overrides)


def build_dataset(builder_class, config, split):
    """The ``split`` dataset that a fresh ``builder_class`` loads from ``config``."""
    builder = builder_class()
    return builder.load_dataset(config, split)
