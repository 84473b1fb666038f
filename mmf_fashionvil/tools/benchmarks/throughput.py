"""How close the training step and the evaluation are to the machine (issue 12), in one run:

    python -m mmf_fashionvil.tools.benchmarks.throughput [--device cpu|cuda] [--size reduced|paper]
        [--batch-size B] [--rounds 7] [--eval-sizes 4096 16384 32768] [--out bench_out/throughput]

1. Per task (ITC, ITM, MLM, MPFC, MVC, PAC and the TGIR fine-tune): samples/s of our training
   step (``fashionvil_trainer``'s update on batches of the synthetic catalog) and of a bare
   PyTorch/transformers step doing the same math (torchvision ResNet-50 trunk, transformers'
   BertEncoder, the same heads, losses and fused AdamW, no MMF), timed in paired rounds on
   the same batches (each round: one pass over the batches per side, the side that goes first
   alternating); the median of the rounds' ratios and their range; FLOPs per step
   (``torch.utils.flop_counter``) and the MFU against the dense matmul peak measured in the
   same run (fp32 on CPU, bf16 on GPU); peak memory on GPU.
2. The loader: samples/s of the training loader (its configured workers) against the step.
3. Evaluation: full ranking (pessimistic ties) of Q queries against Q keys (D = 256, one
   positive each, embeddings on a coarse grid so that ties occur) by ``chunked_ranks`` and by
   a naive argsort of every score row, on the same scores; R@1/5/10 must be identical.

``--size reduced`` (the CPU default) is the paper's architecture (ResNet-50, BERT-base width,
12 heads, 30522-token vocabulary) with 2 transformer layers, 128 px images and 24 text tokens,
batch 8: it runs in minutes on 2 cores. ``--size paper``: 12 layers, 224 px, 40 tokens,
batch 64, bf16 autocast (for ``--device cuda``).
"""
import argparse
import contextlib
import math
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from torch import nn
from transformers.models.bert.modeling_bert import (
    BertEncoder,
    BertOnlyMLMHead,
    BertPredictionHeadTransform,
)

from mmf_fashionvil.tools.mmf_runs import CONFIGS, markdown_table

SIZES = {
    "reduced": {"layers": 2, "image_size": 128, "text_length": 24, "batch_size": 8,
                "amp": False},
    "smoke": {"layers": 1, "image_size": 64, "text_length": 16, "batch_size": 4,
              "amp": False},  # a plumbing check (gpu_check.sh --smoke)
    "paper": {"layers": 12, "image_size": 224, "text_length": 40, "batch_size": 64,
              "amp": True},
}
PRETRAINING_TASKS = ("itc", "itm", "mlm", "mpfc", "mvc", "pac")
EMBEDDING_DIM = 256
NUM_CODES = 64


# --------------------------------------------------------------------------- our step
def our_trainer(task_group, catalog, files, size, device, batch_size, save_dir):
    """A loaded fashionvil_trainer: the six pre-training tasks on fashion_pretraining, or the
    TGIR fine-tune on fashioniq, at the benchmark's model size."""
    import mmf_fashionvil.registry  # noqa: F401
    from mmf_fashionvil.training.trainer import FashionViLTrainer

    model = "model_config.fashionvil"
    if task_group == "pretraining":
        config, dataset = "pretraining/final_tiny.yaml", "fashion_pretraining"
        extra = [f"{model}.heads.mpfc.tokenizer_checkpoint={files['tokenizer']}",
                 f"{model}.heads.pac.attributes_file={files['attributes']}/attributes.json",
                 f"dataset_config.{dataset}.attributes_dir={files['attributes']}"]
    else:
        config, dataset, extra = "finetuning/tgir_fashioniq_tiny.yaml", "fashioniq", []
    side = size["image_size"]
    opts = [
        f"config={CONFIGS}/{config}", "model=fashionvil", f"dataset={dataset}",
        f"env.data_dir={catalog}", f"env.save_dir={save_dir}",
        f"{model}.image_encoder.arch=resnet50", f"{model}.image_encoder.image_size={side}",
        f"{model}.bert.vocab_file=null", f"{model}.bert.vocab_size=30522",
        f"{model}.bert.hidden_size=768", f"{model}.bert.num_hidden_layers={size['layers']}",
        f"{model}.bert.num_attention_heads=12", f"{model}.bert.intermediate_size=3072",
        f"{model}.bert.max_position_embeddings=512", f"{model}.embedding_dim={EMBEDDING_DIM}",
        f"dataset_config.{dataset}.processors.text_processor.params.max_seq_length="
        f"{size['text_length']}",
        f"dataset_config.{dataset}.processors.train_image_processor.params.resize={side}",
        f"dataset_config.{dataset}.processors.train_image_processor.params.crop={side}",
        f"training.batch_size={batch_size}", f"training.device={device.type}",
        f"training.amp.enabled={size['amp']}", "training.progress_bar=false",
        "training.max_updates=1000", *extra,
    ]
    return FashionViLTrainer.loaded_from_options(opts)


def prepared_batches(trainer, count):
    """``count`` training batches of the trainer's loader, on the device, and the loader's
    samples/s producing them."""
    started = time.perf_counter()
    batches = [trainer._next_train_batch() for _ in range(count)]
    elapsed = time.perf_counter() - started
    return batches, count * trainer.global_batch_size / elapsed


def our_step(trainer, task, batches):
    """A function running one fashionvil_trainer update of ``task`` on the next batch."""
    from mmf_fashionvil.training.run_log import IntervalStats
    from mmf_fashionvil.training.safety import NonFiniteGuard

    position = {"next": 0}

    def next_batch():
        batch = batches[position["next"] % len(batches)]
        position["next"] += 1
        return batch.copy()  # the step sets fields on it

    trainer._next_train_batch = next_batch
    trainer._current_task = lambda: task
    trainer._interval = IntervalStats(1)
    trainer._guard = NonFiniteGuard(trainer.device)
    return trainer._train_update


# --------------------------------------------------------------------------- bare baseline
class BareModel(nn.Module):
    """FashionViL's math written directly on torchvision and transformers, without MMF or
    this package's model: the reference the step is compared with."""

    def __init__(self, bert_config, num_visual, num_attributes, image_tokenizer=None):
        super().__init__()
        width = bert_config.hidden_size
        resnet = torchvision.models.resnet50(weights=None)
        self.trunk = nn.Sequential(*list(resnet.children())[:-2])
        self.visual_projection = nn.Linear(2048, width)
        self.word = nn.Embedding(bert_config.vocab_size, width)
        self.text_position = nn.Embedding(bert_config.max_position_embeddings, width)
        self.text_type = nn.Parameter(torch.zeros(width))
        self.visual_position = nn.Embedding(num_visual, width)
        self.visual_type = nn.Parameter(torch.zeros(width))
        self.norm = nn.LayerNorm(width, eps=bert_config.layer_norm_eps)
        self.dropout = nn.Dropout(bert_config.hidden_dropout_prob)
        self.encoder = BertEncoder(bert_config)
        self.image_projection = nn.Linear(width, EMBEDDING_DIM)
        self.text_projection = nn.Linear(width, EMBEDDING_DIM)
        self.scale = nn.Parameter(torch.tensor(4.0))
        self.pooler = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.itm_head = nn.Linear(width, 2)
        self.mlm_head = BertOnlyMLMHead(bert_config)
        self.mlm_head.predictions.decoder.weight = self.word.weight
        self.mpfc_head = nn.Sequential(BertPredictionHeadTransform(bert_config),
                                       nn.Linear(width, NUM_CODES))
        self.pac_weight = nn.Parameter(torch.randn(num_attributes, EMBEDDING_DIM) * 0.02)
        self.pac_scale = nn.Parameter(torch.tensor(10.0))
        object.__setattr__(self, "image_tokenizer", image_tokenizer)

    # the three encoders
    def grid(self, image):
        return self.trunk(image).flatten(2).transpose(1, 2)

    def embed(self, input_ids, visual_tokens=None):
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        parts = [self.word(input_ids) + self.text_position(positions) + self.text_type]
        if visual_tokens is not None:
            positions = torch.arange(visual_tokens.size(1), device=input_ids.device)
            parts.append(visual_tokens + self.visual_position(positions) + self.visual_type)
        return self.dropout(self.norm(torch.cat(parts, 1)))

    def transformer(self, embeddings, mask):
        return self.encoder(embeddings, attention_mask=mask.bool()[:, None, None, :])[0]

    def joint(self, features, projection):
        return F.normalize(projection(features), dim=-1) * self.scale

    def image(self, image):
        tokens = self.visual_projection(self.grid(image))
        return tokens, self.joint(tokens.mean(1), self.image_projection)

    def text(self, input_ids, mask):
        hidden = self.transformer(self.embed(input_ids), mask)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.joint(pooled, self.text_projection)

    def fuse(self, input_ids, mask, tokens, visual_mask=None):
        if visual_mask is None:
            visual_mask = mask.new_ones(tokens.shape[:2])
        return self.transformer(self.embed(input_ids, tokens), torch.cat([mask, visual_mask], 1))

    def compose(self, input_ids, mask, image, visual_mask=None):
        tokens = self.visual_projection(self.grid(image))
        if visual_mask is None:
            visual_mask = mask.new_ones(tokens.shape[:2])
        visual = self.fuse(input_ids, mask, tokens, visual_mask)[:, input_ids.size(1):]
        weights = visual_mask.unsqueeze(-1).to(visual.dtype)
        pooled = (visual * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.joint(pooled, self.image_projection)

    # one loss per task
    def loss(self, task, batch, generator):
        from mmf_fashionvil.modeling.layers import drop_tokens_at_random
        from mmf_fashionvil.modeling.masking import block_patch_mask

        ids, mask, image = batch["input_ids"], batch["input_mask"], batch["image"]
        if task == "itc":
            _, image_embedding = self.image(image)
            return info_nce(image_embedding, self.text(ids, mask), symmetric=True)
        if task == "itm":
            tokens, image_embedding = self.image(image)
            with torch.no_grad():
                scores = image_embedding.float() @ self.text(ids, mask).float().t()
                products = batch["id"].view(-1)
                excluded = products[:, None] == products[None, :]
                uniform = torch.rand(scores.shape, generator=generator, device=scores.device)
                gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20)))
                negatives = (scores.masked_fill(excluded, float("-inf")) + gumbel).argmax(1)
            pooled = self.pooler(self.fuse(torch.cat([ids, ids[negatives]]),
                                           torch.cat([mask, mask[negatives]]),
                                           torch.cat([tokens, tokens]))[:, 0])
            labels = (torch.arange(2 * len(ids), device=ids.device) < len(ids)).long()
            return F.cross_entropy(self.itm_head(pooled), labels)
        if task == "mlm":
            tokens, _ = self.image(image)
            text = self.fuse(batch["masked_input_ids"], mask, tokens)[:, :ids.size(1)]
            logits = self.mlm_head(text)
            return F.cross_entropy(logits.flatten(0, 1), batch["lm_label_ids"].flatten(),
                                   ignore_index=-100)
        if task == "mpfc":
            side = int(math.isqrt(self.visual_position.num_embeddings))
            patch_mask = block_patch_mask(side, side, generator, num_masks=len(image))
            with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
                codes = self.image_tokenizer.tokenize(image.float().clamp(-1, 1))
            tokens = self.visual_projection(self.grid(image).masked_fill(patch_mask[..., None], 0))
            logits = self.mpfc_head(self.fuse(ids, mask, tokens)[:, ids.size(1):])
            return F.cross_entropy(logits.flatten(0, 1),
                                   codes.masked_fill(~patch_mask, -100).flatten(),
                                   ignore_index=-100)
        if task == "mvc":
            side = int(math.isqrt(self.visual_position.num_embeddings))
            text_mask = drop_tokens_at_random(mask, 0.25, generator)
            visual_mask = drop_tokens_at_random(mask.new_ones(len(image), side * side), 0.25,
                                                generator)
            composed = self.compose(ids, text_mask, image, visual_mask)
            return info_nce(composed, self.image(batch["image_view2"])[1], symmetric=True)
        if task == "pac":
            labels = batch["attribute_labels"].float()
            targets = labels / labels.sum(1, keepdim=True).clamp(min=1)
            weight = F.normalize(self.pac_weight, dim=-1)
            losses = [-(targets * F.log_softmax(
                self.pac_scale * F.normalize(e, dim=-1) @ weight.t(), 1).float()).sum(1).mean()
                for e in (self.image(image)[1], self.text(ids, mask))]
            return (losses[0] + losses[1]) / 2
        if task == "tgir":
            composed = self.compose(ids, mask, image)
            return info_nce(composed, self.image(batch["target_image"])[1], symmetric=False)
        raise ValueError(task)


def info_nce(a, b, symmetric):
    targets = torch.arange(len(a), device=a.device)
    loss = F.cross_entropy(a @ b.t(), targets)
    return (loss + F.cross_entropy(b @ a.t(), targets)) / 2 if symmetric else loss


def bare_step(model, optimizer, task, batches, autocast):
    position = {"next": 0}
    generator = torch.Generator(device=batches[0]["image"].device).manual_seed(0)

    def step():
        batch = batches[position["next"] % len(batches)]
        position["next"] += 1
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = model.loss(task, batch, generator)
        loss.backward()
        optimizer.step()
    return step


def bare_model_for(trainer, device):
    ours = trainer.unwrapped_model
    num_visual = ours.embeddings.visual_position_embeddings.num_embeddings
    num_attributes = ours.pac_head.weight.size(0) if hasattr(ours, "pac_head") else 1
    model = BareModel(ours.bert_config, num_visual, num_attributes,
                      getattr(ours, "image_tokenizer", None)).to(device).train()
    if model.image_tokenizer is not None:
        model.image_tokenizer.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-4,
                                  fused=device.type in ("cuda", "cpu"))
    return model, optimizer


# --------------------------------------------------------------------------- measurement
def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device, repeats):
    """Median seconds of ``repeats`` calls."""
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def seconds_per_step(step, device, count):
    """Mean seconds of ``count`` consecutive calls (one synchronisation at the end)."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(count):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / count


def paired_rounds(steps, device, rounds, steps_per_round):
    """Times ``rounds`` rounds; each runs every step function ``steps_per_round`` times in a
    row (one pass over the batches), in an order that alternates between rounds (AB, BA, ...)
    so that neither side always runs first. Returns ({name: [seconds per step, one per
    round]}, {name: peak MB on CUDA})."""
    seconds, memory = {name: [] for name in steps}, {}
    names = list(steps)
    for index in range(rounds):
        for name in (names if index % 2 == 0 else names[::-1]):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds[name].append(seconds_per_step(steps[name], device, steps_per_round))
            if device.type == "cuda":
                memory[name] = torch.cuda.max_memory_allocated(device) / 2**20
    return seconds, memory


def step_flops(step):
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def peak_matmul_flops(device):
    """Dense matmul FLOP/s measured now: fp32 on CPU, bf16 on GPU."""
    n, dtype = (2048, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    seconds = timed(lambda: a @ b, device, 5)
    return 2 * n**3 / seconds


def measure_tasks(args, device, size, workdir):
    files = prepare_inputs(workdir, size)
    peak = peak_matmul_flops(device)
    rows, loader_rows = [], []
    for group, tasks in (("pretraining", PRETRAINING_TASKS), ("tgir", ("tgir",))):
        trainer = our_trainer(group, files["catalog"], files, size, device, args.batch_size,
                              os.path.join(workdir, f"save_{group}"))
        batches, loader_rate = prepared_batches(trainer, 4)
        loader_rows.append((group, loader_rate))
        model, optimizer = bare_model_for(trainer, device)
        autocast = trainer._autocast
        for task in tasks:
            ours, bare = our_step(trainer, task, batches), bare_step(model, optimizer, task,
                                                                   batches, autocast)
            for _ in range(2):  # warm-up (the first steps allocate)
                for step in (ours, bare):
                    step()
            seconds, memory = paired_rounds({"ours": ours, "bare": bare}, device,
                                            args.rounds, len(batches))
            flops = step_flops(ours)
            # Per round, ours / bare = bare's seconds over ours (the same batches, timed back
            # to back): slow phases of the machine hit both sides of a round alike.
            ratios = sorted(b / o for o, b in zip(seconds["ours"], seconds["bare"]))
            median = {k: statistics.median(v) for k, v in seconds.items()}
            rate = {k: args.batch_size / v for k, v in median.items()}
            rows.append([
                task.upper() if task != "tgir" else "TGIR (fine-tune)",
                f"{rate['ours']:.2f}", f"{rate['bare']:.2f}",
                f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})",
                f"{flops / 1e9:.0f}", f"{100 * flops / median['ours'] / peak:.0f} %",
                (f"{memory['ours']:.0f} / {memory['bare']:.0f}" if memory else "n/a"),
                f"{loader_rate / rate['ours']:.1f}",
            ])
            print(" | ".join(rows[-1]), flush=True)
        del trainer, model, optimizer
    return rows, peak


def prepare_inputs(workdir, size):
    """The synthetic catalog at the benchmark's image size, its mined attributes (PAC) and a
    random image tokenizer with one code per grid patch (MPFC)."""
    from mmf_fashionvil.tools.attributes import lexicon_tagger, load_lexicon, mine_attributes
    from mmf_fashionvil.tools.synthetic import generate_catalog

    catalog = os.path.join(workdir, "catalog")
    if not os.path.isdir(catalog):
        generate_catalog(catalog, seed=0, num_products=64, image_size=size["image_size"])
    attributes = os.path.join(workdir, "attributes")
    lexicon = load_lexicon(os.path.join(catalog, "vocab", "pos_lexicon.json"))
    mine_attributes(catalog, attributes, min_count=3, tag_fn=lexicon_tagger(lexicon),
                    tagger_name="lexicon")
    return {"catalog": catalog, "attributes": attributes,
            "tokenizer": random_image_tokenizer(workdir, size["image_size"])}


def random_image_tokenizer(workdir, image_size):
    """A checkpoint (as the trainer saves one) of an untrained VQ-VAE with stride 32: the MPFC
    targets' cost without training a tokenizer first."""
    from mmf_fashionvil.modeling.image_tokenizer import DEFAULTS_YAML, ImageTokenizer

    config = OmegaConf.merge(
        OmegaConf.load(DEFAULTS_YAML).model_config.fashionvil_image_tokenizer,
        {"image_size": image_size, "stride": 32, "base_channels": 16,
         "channel_multipliers": [1, 1, 2, 2, 4, 4], "num_res_blocks": 1,
         "bottleneck_attention": False, "latent_dim": 32, "codebook_size": NUM_CODES},
    )
    tokenizer = ImageTokenizer(config)
    tokenizer.build()
    path = os.path.join(workdir, "tokenizer.ckpt")
    container = {"model_config": {"fashionvil_image_tokenizer": OmegaConf.to_container(config)}}
    torch.save({"model": tokenizer.state_dict(), "config": container}, path)
    return path


# --------------------------------------------------------------------------- evaluation
def naive_ranks(queries, keys, targets, matches, rows=1024):
    """The reference: argsort each row of scores (descending) and find the best positive;
    negatives tied with it count against the query (pessimistic)."""
    from mmf_fashionvil.metrics.ranking import block_scorer

    score_block = block_scorer(keys)
    ranks = []
    for start in range(0, len(queries), rows):
        scores = score_block(queries[start:start + rows])
        positive = targets[start:start + rows, None] == matches[None, :]
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        sorted_scores, sorted_positive = scores.gather(1, order), positive.gather(1, order)
        first = sorted_positive.to(torch.int8).argmax(1)
        best = sorted_scores.gather(1, first[:, None])
        after = torch.arange(scores.size(1), device=scores.device)[None, :] > first[:, None]
        ties_after = ((sorted_scores == best) & ~sorted_positive & after).sum(1)
        ranks.append(first + ties_after)
    return torch.cat(ranks).cpu()


def measure_evaluation(sizes, device):
    from mmf_fashionvil.metrics import ranking
    from mmf_fashionvil.metrics.ranking import chunked_ranks, recall_at_k

    rows = []
    for count in sizes:
        generator = torch.Generator().manual_seed(count)
        queries = torch.randn(count, EMBEDDING_DIM, generator=generator)
        keys = queries + torch.randn(count, EMBEDDING_DIM, generator=generator)
        # On a grid of 1/4: scores are multiples of 1/16 (ties to be counted pessimistically).
        queries, keys = [(F.normalize(x, dim=1) * 8).round() / 4 for x in (queries, keys)]
        queries, keys = queries.to(device), keys.to(device)
        ids = torch.arange(count, device=device)
        started = time.perf_counter()
        with ranking.evaluation_device(device):
            ours = chunked_ranks(queries, keys, ids, ids)
        synchronize(device)
        ours_seconds = time.perf_counter() - started
        started = time.perf_counter()
        naive = naive_ranks(queries, keys, ids, ids)
        synchronize(device)
        naive_seconds = time.perf_counter() - started
        ks = (1, 5, 10)
        same = recall_at_k(ours, ks) == recall_at_k(naive, ks) and torch.equal(ours, naive)
        # Working sets, from the block shapes: ours holds a block of scores and its compare
        # result; the naive one a 1024-row block of scores, sort order, sorted scores and
        # masks.
        block_rows = max(1, min(count, ranking.SCORE_BLOCK // count))
        ours_mb = block_rows * count * (4 + 1) / 2**20
        naive_mb = min(1024, count) * count * (4 + 8 + 4 + 1 + 1 + 1) / 2**20
        rows.append([f"{count:,} x {count:,}", f"{ours_seconds:.1f}", f"{naive_seconds:.1f}",
                     f"{naive_seconds / ours_seconds:.1f}", f"{ours_mb:.0f} / {naive_mb:.0f}",
                     "yes" if same else "NO"])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--size", default=None, choices=sorted(SIZES),
                        help="default: reduced on CPU, paper on CUDA")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=7,
                        help="paired timing rounds per task (each: one pass over 4 batches "
                             "per side)")
    parser.add_argument("--eval-sizes", type=int, nargs="*", default=[4096, 16384, 32768])
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is available")
    size = SIZES[args.size or ("paper" if device.type == "cuda" else "reduced")]
    args.batch_size = args.batch_size or size["batch_size"]
    with contextlib.ExitStack() as stack:
        workdir = args.out or stack.enter_context(tempfile.TemporaryDirectory())
        os.makedirs(workdir, exist_ok=True)
        started = time.perf_counter()
        rows, peak = measure_tasks(args, device, size, workdir)
        evaluation = measure_evaluation(args.eval_sizes, device) if args.eval_sizes else []
    unit = "fp32" if device.type == "cpu" else "bf16"
    print(f"\nTraining step, {args.device}, batch {args.batch_size}, {size['layers']} layers, "
          f"{size['image_size']} px, {size['text_length']} tokens, {args.rounds} paired rounds "
          f"of 4 steps a side (samples/s from the median round, ours / bare the median of the "
          f"rounds' ratios, their range in brackets); "
          f"dense matmul peak {peak / 1e9:.0f} GFLOP/s ({unit}), "
          f"{torch.get_num_threads()} threads")
    print(markdown_table(
        ["task", "ours samples/s", "bare samples/s", "ours / bare", "GFLOP per step", "MFU",
         "peak MB ours / bare", "loader / step"], rows))
    if evaluation:
        print("\nEvaluation (full ranking, D = 256, one positive per query)")
        print(markdown_table(["queries x keys", "ours s", "naive argsort s", "speed-up",
                              "working set MB ours / naive", "identical ranks"], evaluation))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
