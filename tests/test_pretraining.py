"""The pre-training pipeline on the synthetic catalog, each step through its real command:
attribute miner -> image tokenizer (mmf_run) -> six-task pre-training (mmf_run)."""
import json
import os
import re
import sys
from collections import Counter

import pytest
import torch

from helpers import MMF_RUN, read_jsonl, run_command

CONFIGS = "projects/fashionvil/configs/pretraining"
MIN_COUNT = 3
SIX_TASKS = {"itc", "itm", "mlm", "mpfc", "mvc", "pac"}


@pytest.fixture(scope="module")
def mined_attributes(tiny_catalog, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("attributes"))
    code, output = run_command([
        sys.executable, "-m", "mmf_fashionvil.tools.attributes", "--data-dir", tiny_catalog,
        "--min-count", str(MIN_COUNT), "--out", out, "--tagger", "lexicon",
        "--lexicon", os.path.join(tiny_catalog, "vocab", "pos_lexicon.json"),
    ])
    assert code == 0, output[-3000:]
    return out


def train_word_counts(catalog):
    """Occurrences of each lower-cased word in the pre-training train texts, counted here with
    a plain regex (an independent count of what the miner counts)."""
    counts = Counter()
    for dataset in ("FashionGen", "Fashion200k", "PolyvoreOutfits"):
        path = os.path.join(catalog, "datasets", dataset, "train_info.json")
        with open(path) as f:
            for entry in json.load(f):
                text = f"{entry['title']}. {entry.get('description', '')}".lower()
                counts.update(re.findall(r"[a-z]+", text))
    return counts


def test_miner_finds_the_catalogs_attribute_words_and_not_its_filler(tiny_catalog,
                                                                      mined_attributes):
    with open(os.path.join(tiny_catalog, "catalog.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(mined_attributes, "attributes.json")) as f:
        vocabulary = set(json.load(f)["vocabulary"])
    counts = train_word_counts(tiny_catalog)
    attribute_words = set(manifest["attribute_words"])
    # Colours, patterns and garment nouns frequent enough are found ...
    frequent = {w for w in attribute_words if counts[w] > 2 * MIN_COUNT}
    assert {"red", "striped", "dress"} <= frequent  # the catalog is big enough to tell
    assert frequent <= vocabulary
    # ... and nothing else than attribute words and the catalog's generic nouns/adjectives.
    assert vocabulary <= attribute_words | set(manifest["generic_words"])
    assert not vocabulary & set(manifest["filler_words"])
    assert all(counts[w] > MIN_COUNT for w in vocabulary)


@pytest.fixture(scope="module")
def tokenizer_run(tiny_catalog, tmp_path_factory):
    save_dir = str(tmp_path_factory.mktemp("tokenizer"))
    code, output = run_command([
        MMF_RUN, f"config={CONFIGS}/image_tokenizer_tiny.yaml",
        "model=fashionvil_image_tokenizer", "dataset=fashiongen", f"env.data_dir={tiny_catalog}",
        f"env.save_dir={save_dir}", "training.max_updates=4", "training.batch_size=8",
        "training.num_workers=0", "training.log_interval=2", "training.evaluation_interval=4",
        "training.checkpoint_interval=4", "scheduler.params.num_warmup_steps=1",
        "scheduler.params.num_training_steps=4",
    ])
    assert code == 0, output[-4000:]
    return save_dir


def test_tokenizer_training_logs_codebook_usage(tokenizer_run):
    num_codes = 64  # image_tokenizer_tiny.yaml
    for record in read_jsonl(os.path.join(tokenizer_run, "train_log.jsonl")):
        diagnostics = record["diagnostics"]
        (perplexity,) = [v for k, v in diagnostics.items() if k.endswith("codebook_perplexity")]
        (used,) = [v for k, v in diagnostics.items() if k.endswith("codebook_used_fraction")]
        # exp(entropy) of a histogram over the used codes lies in [1, number used]
        assert 1.0 <= perplexity <= used * num_codes + 1e-4
        assert 0 < used <= 1


def test_six_task_pretraining_through_mmf_run(tiny_catalog, mined_attributes, tokenizer_run,
                                              tmp_path):
    tokenizer = os.path.join(tokenizer_run, "best.ckpt")
    assert os.path.isfile(tokenizer)
    updates = 18
    code, output = run_command([
        MMF_RUN, f"config={CONFIGS}/final_tiny.yaml", "model=fashionvil",
        "dataset=fashion_pretraining", f"env.data_dir={tiny_catalog}", f"env.save_dir={tmp_path}",
        f"model_config.fashionvil.heads.mpfc.tokenizer_checkpoint={tokenizer}",
        f"model_config.fashionvil.heads.pac.attributes_file={mined_attributes}/attributes.json",
        f"dataset_config.fashion_pretraining.attributes_dir={mined_attributes}",
        f"training.max_updates={updates}", "training.batch_size=8", "training.num_workers=0",
        "training.log_interval=1", f"training.evaluation_interval={updates}",
        f"training.checkpoint_interval={updates}", "scheduler.params.num_warmup_steps=2",
        f"scheduler.params.num_training_steps={updates}",
    ], timeout=900)
    assert code == 0, output[-4000:]
    records = read_jsonl(tmp_path / "train_log.jsonl")
    assert [r["update"] for r in records] == list(range(1, updates + 1))
    # One task per update (log_interval 1), each logged under its own name with a finite loss.
    seen = set()
    for record in records:
        (task, loss), = record["task_losses"].items()
        assert task in SIX_TASKS and torch.isfinite(torch.tensor(loss))
        assert record["loss"] == pytest.approx(loss)
        seen.add(task)
    assert len(seen) >= 4  # 18 draws from six tasks (probabilities .15-.20 each)
    # Validation measures retrieval (evaluation_task: itc) whatever the step's task was.
    evaluation = read_jsonl(tmp_path / "eval_log.jsonl")[-1]
    key = "val/fashion_pretraining/fashionvil_retrieval/general/r_mean"
    assert 0 <= evaluation["metrics"][key] <= 100
    checkpoint = torch.load(tmp_path / "current.ckpt", weights_only=False)
    heads = {key.split(".")[0] for key in checkpoint["model"]}
    assert {"itm_head", "mlm_head", "mpfc_head", "pac_head"} <= heads
    assert not any(key.startswith("image_tokenizer") for key in checkpoint["model"])
