"""``fashionvil_trainer``: the training/evaluation loop used by ``mmf_run`` when
``training.trainer=fashionvil_trainer`` (SPEC §6 item 8).

rc10's BaseTrainer has no AMP, no gradient accumulation, runs max_updates+1
steps, steps the scheduler late, turns on anomaly detection and cannot resume
exactly; this trainer replaces its loop and keeps rc10's registry, model
building, SampleList/BatchCollator and the models' ``Losses``.

What makes resume exact: the training data order is a function of
(seed, epoch) and the position in the epoch; datasets draw per-item randomness
from (seed, epoch, index); the per-step task from (seed, update); evaluation
leaves the global RNGs untouched; checkpoints hold model, optimizer, scheduler,
grad scaler, every rank's RNG states and the data position.
"""
import contextlib
import hashlib
import json
import math
import os
import pickle
import random
import resource
import sys
import time

import numpy as np
import torch
from mmf.common.batch_collator import BatchCollator
from mmf.common.registry import registry
from mmf.utils.build import build_model
from mmf.utils.general import get_optimizer_parameters
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mmf_fashionvil import distributed
from mmf_fashionvil.losses import drop_skipped

CHECKPOINT_FORMAT = "mmf_fashionvil.trainer/1"
SCHEDULES = ("warmup_linear", "warmup_cosine", "warmup_multistep")
SCHEDULE_PARAMS = {"num_warmup_steps", "num_training_steps", "milestones", "gamma"}


def derived_seed(*values):
    """A well-mixed 63-bit seed from integers (e.g. (seed, epoch, stream))."""
    entropy = [int(v) % (2**63) for v in values]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


# Distinct stream ids so that seeds derived for different purposes never coincide.
_SAMPLER_STREAM, _LOADER_STREAM, _TASK_STREAM = 1, 2, 3


# ----------------------------------------------------------------------------
# Learning-rate schedules
# ----------------------------------------------------------------------------
def schedule_factor(kind, update, num_warmup_steps=0, num_training_steps=None,
                    milestones=(), gamma=0.1):
    """Multiplier of the base lr for optimizer update ``update`` (0 = the first).

    Warm-up (update < W): (update + 1) / W, so no update runs with lr 0 and
    update W-1 reaches the base lr. After warm-up, with T = num_training_steps:
    warmup_linear (T - update) / (T - W); warmup_cosine
    0.5 * (1 + cos(pi * (update - W) / (T - W))); warmup_multistep
    gamma ** (number of milestones <= update).
    """
    if update < num_warmup_steps:
        return (update + 1) / num_warmup_steps
    if kind == "warmup_multistep":
        return gamma ** sum(1 for milestone in milestones if update >= milestone)
    progress = min(1.0, (update - num_warmup_steps) / (num_training_steps - num_warmup_steps))
    if kind == "warmup_linear":
        return 1.0 - progress
    if kind == "warmup_cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"Unknown schedule '{kind}'; known: {', '.join(SCHEDULES)}")


def build_lr_scheduler(optimizer, scheduler_config, max_updates):
    """LambdaLR for ``scheduler: {type, params}``; stepped once after every
    optimizer update, so update u runs at base_lr * schedule_factor(u).
    Other types are looked up in MMF's scheduler registry. None without a type."""
    kind = scheduler_config.get("type") if scheduler_config else None
    if not kind:
        return None
    params = dict(scheduler_config.get("params") or {})
    if kind not in SCHEDULES:
        scheduler_class = registry.get_scheduler_class(kind)
        if scheduler_class is None:
            known = sorted(set(SCHEDULES) | set(registry.mapping["scheduler_name_mapping"]))
            raise ValueError(f"scheduler.type '{kind}' is unknown; known: {', '.join(known)}")
        return scheduler_class(optimizer, **params)
    unknown = set(params) - SCHEDULE_PARAMS
    if unknown:
        raise ValueError(
            f"scheduler.params {sorted(unknown)} not understood by '{kind}' "
            f"(accepted: {sorted(SCHEDULE_PARAMS)})"
        )
    warmup = int(params.get("num_warmup_steps", 0))
    total = int(params.get("num_training_steps") or max_updates)
    milestones = sorted(int(m) for m in params.get("milestones", []))
    gamma = float(params.get("gamma", 0.1))
    if warmup < 0 or (kind != "warmup_multistep" and total <= warmup):
        raise ValueError(
            f"scheduler '{kind}': need 0 <= num_warmup_steps ({warmup}) < "
            f"num_training_steps ({total})"
        )

    def factor(update):
        return schedule_factor(kind, update, warmup, total, milestones, gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------
# Per-step task sampling
# ----------------------------------------------------------------------------
def task_generator(seed, update):
    """The generator a step's task is drawn from: the same on every rank and
    after a resume, without communication."""
    return torch.Generator().manual_seed(derived_seed(seed, update, _TASK_STREAM))


def draw_task(seed, update, tasks, probabilities):
    index = torch.multinomial(
        torch.tensor(probabilities, dtype=torch.float64), 1,
        generator=task_generator(seed, update),
    )
    return tasks[int(index)]


def parse_tasks(model_config):
    """(tasks, probabilities) from ``training_tasks`` and ``task_probabilities``
    (a list aligned with the tasks or a {task: p} mapping; default uniform)."""
    tasks = model_config.get("training_tasks") if model_config is not None else None
    if not tasks:
        return [], []
    tasks = [tasks] if isinstance(tasks, str) else [str(t) for t in tasks]
    given = model_config.get("task_probabilities")
    if given is None or len(tasks) == 1:  # one task: nothing to draw
        weights = [1.0] * len(tasks)
    elif OmegaConf.is_dict(given) or isinstance(given, dict):
        missing = [t for t in tasks if t not in given]
        if missing:
            raise ValueError(f"task_probabilities has no entry for training task(s) {missing}")
        weights = [float(given[t]) for t in tasks]
    else:
        weights = [float(p) for p in given]
        if len(weights) != len(tasks):
            raise ValueError(
                f"task_probabilities has {len(weights)} values for {len(tasks)} "
                f"training_tasks {tasks}"
            )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"task_probabilities must be >= 0 with a positive sum, got {weights}")
    return tasks, [w / sum(weights) for w in weights]


# ----------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------
class TrainBatchSampler:
    """Resumable distributed batch sampler for training.

    Epoch e visits ``perm_e = randperm(N)`` drawn from (seed, e); global batch
    s is ``perm_e[s*B:(s+1)*B]`` and rank r takes its slice [r*b, (r+1)*b)
    with b = B / world_size. The last incomplete global batch is dropped. The
    samples of an update therefore do not depend on the number of ranks, and a
    resumed epoch starts at batch ``start_batch`` without loading the others.
    """

    def __init__(self, num_samples, global_batch_size, rank, world_size, seed):
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.batch_size = global_batch_size // world_size
        self.rank = rank
        self.seed = seed
        self.batches_per_epoch = num_samples // global_batch_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch, start_batch=0):
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self):
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(
            derived_seed(self.seed, self.epoch, _SAMPLER_STREAM)
        )
        order = torch.randperm(self.num_samples, generator=generator)
        for step in range(self.start_batch, self.batches_per_epoch):
            begin = step * self.global_batch_size + self.rank * self.batch_size
            yield order[begin : begin + self.batch_size].tolist()


class EvalBatchSampler:
    """Evaluation batches without padding: rank r takes the r-th of W
    contiguous, near-equal shards of the split, cut into the same number of
    batches on every rank (so collectives inside a model's forward, such as
    contrastive losses gathering negatives, pair up across ranks)."""

    def __init__(self, num_samples, batch_size, rank, world_size):
        shards = np.array_split(np.arange(num_samples), world_size)
        num_batches = math.ceil(len(shards[0]) / batch_size)
        if len(shards[-1]) < num_batches:
            raise ValueError(
                f"Cannot split {num_samples} evaluation samples over {world_size} ranks "
                f"into equal numbers of non-empty batches of at most {batch_size}: use a "
                "larger evaluation batch size or fewer ranks"
            )
        self.batches = [b.tolist() for b in np.array_split(shards[rank], num_batches)]

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


# ----------------------------------------------------------------------------
# Optimizer step, RNG states, checkpoint files
# ----------------------------------------------------------------------------
def optimizer_step(optimizer, parameters, scaler=None, max_grad_norm=None):
    """Unscales the gradients (fp16), clips their global L2 norm to
    ``max_grad_norm`` (after unscaling, so the threshold is in real units) and
    steps. Returns the norm before clipping, or None when not clipping."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = None
    if max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return norm


def capture_rng_state(device):
    """The global RNG states, as tensors and plain Python values only so that
    checkpoints load with ``torch.load(weights_only=True)``."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((
        "MT19937",
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["pos"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_atomic(state, path):
    """torch.save to a temporary file in the same folder, fsync, then rename:
    a killed process leaves either the old file or the new one, never half."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def read_checkpoint(path, allow_unsafe=False):
    """Loads a checkpoint on the CPU.

    Our checkpoints hold only tensors and plain Python values, so they load with
    ``weights_only=True`` (no arbitrary code runs while unpickling). Older MMF
    checkpoints may pickle other objects; ``allow_unsafe`` (config
    ``checkpoint.allow_unsafe_load``) loads those with weights_only=False and is
    only for files you trust."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_unsafe)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"Checkpoint '{path}' holds objects that torch.load(weights_only=True) refuses "
            f"({e}). If you trust the file, set checkpoint.allow_unsafe_load=true"
        ) from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(
            f"Checkpoint '{path}' cannot be read (corrupt or truncated?): {e}"
        ) from None


def model_state_from_checkpoint(checkpoint, path):
    """The model's state dict in a checkpoint: ours / MMF's (key "model") or a
    bare state dict; DDP's "module." prefixes removed."""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"Checkpoint '{path}' holds no model state dict")
    return {key[len("module."):] if key.startswith("module.") else key: value
            for key, value in state.items()}


def apply_state_mapping(state_dict, mapping):
    """rc10's ``checkpoint.pretrained_state_mapping`` ({model prefix: checkpoint
    prefix}): only checkpoint keys under a mapped prefix are kept, renamed to the
    model prefix. An empty mapping keeps every key as it is."""
    if not mapping:
        return state_dict
    renamed = {}
    for own_prefix, checkpoint_prefix in mapping.items():
        for key, value in state_dict.items():
            if key.startswith(f"{checkpoint_prefix}."):
                renamed[f"{own_prefix}.{key[len(checkpoint_prefix) + 1:]}"] = value
    return renamed


def load_model_weights(model, state_dict, path, require_all):
    """Copies the entries of ``state_dict`` whose name and shape match into
    ``model``. Returns {"missing", "unexpected", "mismatched"} name lists;
    with ``require_all`` missing or mis-shaped parameters are an error."""
    if hasattr(model, "format_state_key"):
        state_dict = {model.format_state_key(k): v for k, v in state_dict.items()}
    own = model.state_dict()
    mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in state_dict if k not in own]
    matched = {k: v for k, v in state_dict.items() if k in own and k not in mismatched}
    missing = [k for k in own if k not in state_dict]
    if require_all and (missing or mismatched):
        raise ValueError(
            f"Checkpoint '{path}' does not fit the model: missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, shape mismatch {mismatched[:10]}"
        )
    # Bypass BaseModel.load_state_dict: keys are formatted above already.
    torch.nn.Module.load_state_dict(model, matched, strict=False)
    return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def deduplicate_by_sample_index(collected):
    """Sorts the rows of a metric's collected tensors by ``sample_index`` and
    keeps the first row of each index. Keys whose row count differs from
    ``sample_index``'s (e.g. flat per-image rows) are passed through as they are."""
    if "sample_index" not in collected:
        return collected
    index = collected["sample_index"].reshape(-1).long()
    order = torch.argsort(index, stable=True)
    first = torch.ones(len(order), dtype=torch.bool)
    first[1:] = index[order][1:] != index[order][:-1]
    rows = order[first]
    return {key: value[rows] if value.shape[0] == len(index) else value
            for key, value in collected.items()}


def _format_seconds(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _to_float(value):
    if torch.is_tensor(value):
        return float(value.detach().float().mean())
    return float(value)


# ----------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------
@registry.register_trainer("fashionvil_trainer")
class FashionViLTrainer:
    """``mmf_run`` calls ``load()`` then ``train()``.

    Config keys read (default): run_type (train); model; datasets (one name);
    model_config.<model> (+ training_tasks, task_probabilities,
    pretrained_checkpoint); dataset_config.<dataset>; env.save_dir (./save);
    training.{seed, batch_size (global), update_frequency (1), max_updates,
    max_epochs (whichever comes first), log_interval (100), checkpoint_interval
    (1000), evaluation_interval (1000), num_workers (0), pin_memory (false),
    device (cuda = when available), amp.enabled (false), amp.dtype (bf16),
    clip_gradients (false), max_grad_l2_norm, find_unused_parameters (false),
    progress_bar (auto), exit_on_nan (true), best_metric,
    best_metric_minimize (false), early_stop.{enabled, criteria, minimize,
    patience}}; optimizer.{type, params}; scheduler.{type, params};
    evaluation.{metrics, batch_size (training.batch_size)};
    checkpoint.{resume, resume_file, resume_pretrained, resume_best,
    pretrained_state_mapping ({}), max_to_keep (-1 = all), allow_unsafe_load (false)}.

    Outputs in env.save_dir (rank 0): train_log.jsonl (one JSON record per log
    interval), eval_log.jsonl (one per evaluation), current.ckpt,
    models/model_<update>.ckpt, best.ckpt. Besides ``losses`` a model may return
    ``diagnostics`` ({name: scalar tensor}, e.g. codebook usage): they are averaged
    like the losses (over micro-batches, the log interval and the ranks in training,
    sample-weighted in evaluation) and logged under "diagnostics".
    """

    def __init__(self, config):
        self.config = config

    # -- config access ------------------------------------------------------
    def _get(self, key, default=None):
        value = OmegaConf.select(self.config, key, default=None)
        return default if value is None else value

    # -- set-up ---------------------------------------------------------------
    def load(self):
        # As rc10's run() does; models' Losses read it from the registry.
        registry.register("config", self.config)
        self._setup_device()
        self._setup_run()
        checkpoint_path, load_mode = self._checkpoint_to_load()
        checkpoint = None
        if checkpoint_path is not None:
            checkpoint = read_checkpoint(
                checkpoint_path, bool(self._get("checkpoint.allow_unsafe_load", False))
            )
            self._log(f"Loading {load_mode} state from {checkpoint_path}")
            if load_mode == "full" and checkpoint.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(
                    f"'{checkpoint_path}' was not written by fashionvil_trainer; to start "
                    "from its model weights only, set checkpoint.resume_pretrained=true"
                )
        self._setup_seed(checkpoint if load_mode == "full" else None)
        self._setup_amp()
        self._build_datasets()
        self._build_model()
        if load_mode in ("model", "pretrained"):
            self._load_weights(checkpoint, checkpoint_path, require_all=load_mode == "model")
        if self.training:
            self._build_optimization()
            self._reset_counters()
            if load_mode == "full":
                self._restore(checkpoint, checkpoint_path)
        self._wrap_model()
        self._build_metrics()

    def _setup_device(self):
        wanted = str(self._get("training.device", "cuda"))
        if wanted.startswith("cuda") and torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", self._get("device_id", 0)))
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")
        distributed.init_from_env(self.device)
        self.rank = distributed.get_rank()
        self.world_size = distributed.get_world_size()
        registry.register("current_device", self.device)
        registry.register("global_device", self.device)

    def _setup_run(self):
        self.run_type = str(self._get("run_type", "train"))
        self.training = "train" in self.run_type
        final_splits = []
        if self.training or "val" in self.run_type:
            final_splits.append("val")
        if any(word in self.run_type for word in ("test", "inference", "predict")):
            final_splits.append("test")
        if not self.training and not final_splits:
            raise ValueError(
                f"run_type '{self.run_type}' is not understood: use train, train_val, "
                "train_test, val or test"
            )
        if self._get("evaluation.predict", False):
            raise ValueError("evaluation.predict is not supported by fashionvil_trainer")
        self.final_splits = final_splits
        save_dir = str(self._get("env.save_dir", "./save"))
        self.save_dir = os.path.abspath(os.path.expanduser(save_dir))
        if distributed.is_main_process():
            os.makedirs(self.save_dir, exist_ok=True)
        self.log_interval = int(self._get("training.log_interval", 100))
        self.checkpoint_interval = int(self._get("training.checkpoint_interval", 1000))
        self.evaluation_interval = int(self._get("training.evaluation_interval", 1000))
        self.update_frequency = int(self._get("training.update_frequency", 1))
        for name in ("log_interval", "checkpoint_interval", "evaluation_interval",
                     "update_frequency"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        progress = str(self._get("training.progress_bar", "auto")).lower()
        self.show_progress = distributed.is_main_process() and (
            progress == "true" or (progress == "auto" and sys.stdout.isatty())
        )
        self._bar = None

    def _checkpoint_to_load(self):
        """(path, mode): mode "full" restores the whole training state, "model"
        the model weights strictly, "pretrained" the matching weights only."""
        resume = bool(self._get("checkpoint.resume", False))
        resume_file = self._get("checkpoint.resume_file")
        pretrained = bool(self._get("checkpoint.resume_pretrained", False))
        own_name = "best.ckpt" if self._get("checkpoint.resume_best", False) else "current.ckpt"
        own = os.path.join(self.save_dir, own_name)
        model_pretrained = self._get(f"model_config.{self._get('model')}.pretrained_checkpoint")
        if resume and os.path.isfile(own):
            return own, "full" if self.training else "model"
        if resume_file:
            if pretrained:
                return str(resume_file), "pretrained"
            return str(resume_file), "full" if self.training else "model"
        if model_pretrained:
            return str(model_pretrained), "pretrained"
        if not self.training:
            self._log("No checkpoint given (checkpoint.resume_file): evaluating an untrained model")
        return None, None

    def _setup_seed(self, checkpoint):
        seed = checkpoint["seed"] if checkpoint is not None else self._get("training.seed")
        if seed is None or int(seed) < 0:
            seed = int.from_bytes(os.urandom(4), "little")
        # Ranks must agree on the seed: it fixes data order and per-step tasks.
        seed = int(distributed.broadcast_object(int(seed)))
        # As rc10's run() does; repeated here so that programmatic use is seeded too.
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self.seed = seed
        registry.register("seed", seed)
        if self._get("training.seed") is not None:
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

    def _build_datasets(self):
        names = self._get("datasets", "")
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        names = [n for n in names if n]
        if len(names) != 1:
            raise ValueError(f"fashionvil_trainer trains on exactly one dataset; datasets={names}")
        self.dataset_name = name = names[0]
        builder_class = registry.get_builder_class(name)
        if builder_class is None:
            known = ", ".join(sorted(registry.mapping["builder_name_mapping"])) or "none"
            raise ValueError(f"No dataset builder registered as '{name}'. Registered: {known}")
        dataset_config = self._get(f"dataset_config.{name}")
        if dataset_config is None:
            raise ValueError(f"The config has no dataset_config.{name}")

        splits = (["train"] if self.training else []) + self.final_splits
        builder = builder_class()
        self.datasets = {}
        for split in splits:
            builder.build_dataset(dataset_config, split)
            dataset = builder.load_dataset(dataset_config, split)
            builder.update_registry_for_model(dataset_config)
            if dataset is None:
                self._log(f"Dataset {name} has no {split} split: skipped")
                continue
            if len(dataset) == 0:
                raise ValueError(f"The {split} split of dataset {name} is empty")
            self.datasets[split] = dataset
        if self.training and "train" not in self.datasets:
            raise ValueError(f"Dataset {name} has no train split to train on")
        for split in self.final_splits:
            if split not in self.datasets and not (self.training and split == "val"):
                raise ValueError(f"run_type={self.run_type} needs the {split} split of {name}")

        batch_size = int(self._get("training.batch_size", 0))
        if batch_size < 1 or batch_size % self.world_size:
            raise ValueError(
                f"training.batch_size ({batch_size}) is the global batch: it must be a "
                f"positive multiple of the number of ranks ({self.world_size})"
            )
        self.global_batch_size = batch_size
        eval_batch_size = int(self._get("evaluation.batch_size", batch_size))
        if eval_batch_size < self.world_size:
            raise ValueError(
                f"evaluation.batch_size ({eval_batch_size}) is the global batch: it must "
                f"be at least the number of ranks ({self.world_size})"
            )

        self.loaders = {}
        for split, dataset in self.datasets.items():
            if split == "train":
                sampler = TrainBatchSampler(
                    len(dataset), batch_size, self.rank, self.world_size, self.seed
                )
                if sampler.batches_per_epoch == 0:
                    raise ValueError(
                        f"The train split of {name} has {len(dataset)} samples, fewer than "
                        f"one global batch ({batch_size})"
                    )
                self.train_sampler = sampler
            else:
                sampler = EvalBatchSampler(
                    len(dataset), eval_batch_size // self.world_size, self.rank, self.world_size
                )
            self.loaders[split] = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=sampler,
                collate_fn=BatchCollator(getattr(dataset, "dataset_name", name), split),
                num_workers=int(self._get("training.num_workers", 0)),
                pin_memory=(bool(self._get("training.pin_memory", False))
                            and self.device.type == "cuda"),
                # Its own generator: creating an iterator must not consume the
                # global RNG (exact resume).
                generator=torch.Generator(),
            )

        if self.training:
            # Whichever of max_updates / max_epochs comes first (either may be null).
            limits = []
            if self._get("training.max_updates") is not None:
                limits.append(int(self._get("training.max_updates")))
            if self._get("training.max_epochs") is not None:
                per_epoch = self.train_sampler.batches_per_epoch / self.update_frequency
                limits.append(int(self._get("training.max_epochs") * per_epoch))
            self.max_updates = min(limits, default=0)
            if self.max_updates < 1:
                raise ValueError("Set training.max_updates (or training.max_epochs) to train")

    def _build_model(self):
        model_name = self._get("model")
        model_class = registry.get_model_class(model_name) if model_name else None
        if model_class is None:
            known = ", ".join(sorted(registry.mapping["model_name_mapping"])) or "none"
            raise ValueError(f"No model registered as '{model_name}'. Registered: {known}")
        attributes = self._get(f"model_config.{model_name}")
        if isinstance(attributes, str):
            attributes = self._get(f"model_config.{attributes}")
        if attributes is None:
            raise ValueError(f"The config has no model_config.{model_name}")
        with open_dict(attributes):
            attributes.model = model_name
        self.model = build_model(attributes).to(self.device)
        self.tasks, self.task_probabilities = parse_tasks(attributes)
        sampler = getattr(self.model, "task_sampler", None)
        self.task_sampler = sampler if callable(sampler) else None

    def _load_weights(self, checkpoint, path, require_all):
        state = model_state_from_checkpoint(checkpoint, path)
        if not require_all:
            state = apply_state_mapping(
                state, self._get("checkpoint.pretrained_state_mapping", {})
            )
        report = load_model_weights(self.model, state, path, require_all)
        for kind, names in report.items():
            if names:
                shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                self._log(f"Weights from {path}: {len(names)} {kind} key(s): {shown}")

    def _build_optimization(self):
        optimizer_config = self._get("optimizer")
        kind = optimizer_config.get("type") if optimizer_config else None
        if not kind:
            raise ValueError("Set optimizer.type (e.g. AdamW) and optimizer.params")
        params = OmegaConf.to_container(optimizer_config.get("params") or {}, resolve=True)
        optimizer_class = getattr(torch.optim, kind, None)
        if not (isinstance(optimizer_class, type)
                and issubclass(optimizer_class, torch.optim.Optimizer)):
            optimizer_class = registry.get_optimizer_class(kind)
        if optimizer_class is None:
            known = ", ".join(sorted(registry.mapping["optimizer_name_mapping"]))
            raise ValueError(
                f"optimizer.type '{kind}' is neither in torch.optim nor registered ({known})"
            )
        parameters = get_optimizer_parameters(self.model, self.config)
        self.optimizer = optimizer_class(parameters, **params)
        scheduler_config = self._get("scheduler")
        if scheduler_config is not None:
            scheduler_config = OmegaConf.to_container(scheduler_config, resolve=True)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, scheduler_config, self.max_updates)

        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        clip = bool(self._get("training.clip_gradients", False))
        self.max_grad_norm = self._get("training.max_grad_l2_norm") if clip else None
        if self.max_grad_norm is not None:
            self.max_grad_norm = float(self.max_grad_norm)

    def _setup_amp(self):
        self.amp_dtype = None
        if not self._get("training.amp.enabled", False):
            return
        name = str(self._get("training.amp.dtype", "bf16")).lower()
        dtypes = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                  "fp16": torch.float16, "float16": torch.float16}
        if name not in dtypes:
            raise ValueError(f"training.amp.dtype must be bf16 or fp16, got '{name}'")
        if self.device.type == "cuda":
            self.amp_dtype = dtypes[name]
        else:
            self._log("training.amp.enabled is ignored on CPU: running in fp32")

    def _reset_counters(self):
        self.num_updates = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best = None
        self._pending_rng = None

    def _restore(self, checkpoint, path):
        load_model_weights(self.model, checkpoint["model"], path, require_all=True)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.lr_scheduler is not None and checkpoint.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if self.scaler is not None and checkpoint.get("grad_scaler") is not None:
            self.scaler.load_state_dict(checkpoint["grad_scaler"])
        self.num_updates = int(checkpoint["update"])
        self.epoch = int(checkpoint["epoch"])
        self.batches_in_epoch = int(checkpoint["batches_in_epoch"])
        self.best = checkpoint.get("best")
        if checkpoint.get("global_batch_size") != self.global_batch_size:
            self._log(
                f"The checkpoint was trained with global batch "
                f"{checkpoint.get('global_batch_size')}, now {self.global_batch_size}: "
                "the data order will differ from the original run"
            )
        states = checkpoint["rng"]
        if len(states) != self.world_size:
            self._log(f"The checkpoint has RNG states of {len(states)} rank(s), now "
                      f"{self.world_size}: randomness will differ from the original run")
        self._pending_rng = states[self.rank % len(states)]
        self._log(f"Resumed at update {self.num_updates} (epoch {self.epoch}, "
                  f"batch {self.batches_in_epoch} of the epoch)")

    def _wrap_model(self):
        self.unwrapped_model = self.model
        if self.world_size > 1 and self.training:
            find_unused = bool(self._get("training.find_unused_parameters", False))
            if len(self.tasks) > 1 and not find_unused:
                # A step runs one task: the other heads get no gradient.
                self._log("Several training tasks: DDP find_unused_parameters turned on")
                find_unused = True
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused,
            )

    def _build_metrics(self):
        entries = self._get("evaluation.metrics", [])
        if isinstance(entries, str) or OmegaConf.is_dict(entries):
            entries = [entries]
        self.metrics = {}
        for entry in entries:
            if isinstance(entry, str):
                kind, params, name = entry, {}, entry
            else:
                kind = entry.get("type")
                if not kind:
                    raise ValueError(f"evaluation.metrics entry {entry} has no 'type'")
                params = OmegaConf.to_container(entry.get("params") or {}, resolve=True)
                name = entry.get("name") or kind
            metric_class = registry.get_metric_class(kind)
            if metric_class is None:
                known = ", ".join(sorted(registry.mapping["metric_name_mapping"]))
                raise ValueError(f"No metric registered as '{kind}'. Registered: {known}")
            if name in self.metrics:
                raise ValueError(f"Two evaluation metrics are named '{name}': give each a 'name'")
            self.metrics[name] = metric_class(**params)

    # -- logging --------------------------------------------------------------
    def _log(self, message):
        if not distributed.is_main_process():
            return
        line = f"[fashionvil_trainer] {message}"
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def _append_json(self, file_name, record):
        if distributed.is_main_process():
            with open(os.path.join(self.save_dir, file_name), "a") as f:
                f.write(json.dumps(record) + "\n")

    # -- training ---------------------------------------------------------------
    def train(self):
        if not self.training:
            for split in self.final_splits:
                self.evaluate(split)
            return
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng, self.device)
            self._pending_rng = None
        from tqdm import tqdm

        if self.show_progress:
            self._bar = tqdm(total=self.max_updates, initial=self.num_updates, unit="update",
                             dynamic_ncols=True)
        self.model.train()
        self._train_iterator = None
        self._start_interval()
        last_saved = last_evaluated = None
        stop = False
        self._log(f"Training from update {self.num_updates} to {self.max_updates} "
                  f"(global batch {self.global_batch_size} x {self.update_frequency} "
                  f"micro-batches, {self.world_size} rank(s), device {self.device})")
        while self.num_updates < self.max_updates and not stop:
            started = time.perf_counter()
            self._train_update()
            self._interval["time"] += time.perf_counter() - started
            if self._bar is not None:
                self._bar.update(1)
            update = self.num_updates
            if update % self.log_interval == 0 or update == self.max_updates:
                self._log_interval()
            if "val" in self.datasets and (
                update % self.evaluation_interval == 0 or update == self.max_updates
            ):
                stop = self._validate()
                last_evaluated = update
            if update % self.checkpoint_interval == 0 or update == self.max_updates or stop:
                self._save_checkpoints()
                last_saved = update
        if self._interval["updates"]:
            self._log_interval()
        if last_saved != self.num_updates:
            self._save_checkpoints()
        if self.world_size > 1:
            self._check_replicas_agree()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for split in self.final_splits:
            just_evaluated = split == "val" and last_evaluated == self.num_updates
            if split in self.datasets and not just_evaluated:
                self.evaluate(split)

    def _check_replicas_agree(self):
        """DDP keeps the ranks' parameters bit-identical; anything else is a bug
        (e.g. a rank that skipped a gradient all-reduce). Buffers are left out:
        BatchNorm statistics of the last forward are each rank's own (DDP
        re-broadcasts rank 0's at the next forward, and rank 0 saves them)."""
        digest = hashlib.sha256()
        for name, value in self.unwrapped_model.named_parameters():
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        digests = distributed.gather_objects(digest.hexdigest())
        differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if differing:
            raise RuntimeError(f"Model parameters of rank(s) {differing} differ from rank 0's")
        self._log(f"Model parameters identical across {self.world_size} ranks")

    def _next_train_batch(self):
        dataset = self.datasets["train"]
        loader = self.loaders["train"]
        while True:
            if self._train_iterator is None:
                self.train_sampler.set_epoch(self.epoch, self.batches_in_epoch)
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(self.epoch)
                loader.generator.manual_seed(derived_seed(self.seed, self.epoch, _LOADER_STREAM))
                self._train_iterator = iter(loader)
            try:
                batch = next(self._train_iterator)
            except StopIteration:
                self.epoch += 1
                self.batches_in_epoch = 0
                self._train_iterator = None
                continue
            self.batches_in_epoch += 1
            return self._prepare(batch, dataset)

    def _prepare(self, batch, dataset):
        if hasattr(dataset, "prepare_batch"):
            return dataset.prepare_batch(batch)
        return batch.to(self.device)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _current_task(self):
        if self.task_sampler is not None:
            return self.task_sampler(task_generator(self.seed, self.num_updates))
        if self.tasks:
            return draw_task(self.seed, self.num_updates, self.tasks, self.task_probabilities)
        return None

    def _train_update(self):
        registry.register("num_updates", self.num_updates)
        registry.register("current_epoch", self.epoch)
        task = self._current_task()
        self.optimizer.zero_grad(set_to_none=True)
        update_loss = 0.0
        components, diagnostics = {}, {}
        for micro_step in range(self.update_frequency):
            batch = self._next_train_batch()
            if task is not None:
                batch.task = task
            last = micro_step == self.update_frequency - 1
            # Gradients are all-reduced once per update, on the last micro-batch.
            skip_sync = self.world_size > 1 and not last
            with self.model.no_sync() if skip_sync else contextlib.nullcontext():
                with self._autocast():
                    output = self.model(batch)
                losses = drop_skipped(output.get("losses") or {})
                if not losses:
                    raise ValueError(
                        "The model returned no losses: set model_config.<model>.losses and "
                        "make sure the dataset provides `targets`"
                    )
                loss = sum(value.mean() for value in losses.values())
                scaled = loss / self.update_frequency
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            update_loss = update_loss + loss.detach().float() / self.update_frequency
            for key, value in losses.items():
                share = value.detach().float().mean() / self.update_frequency
                components[key] = components.get(key, 0.0) + share
            for key, value in (output.get("diagnostics") or {}).items():
                share = value.detach().float().mean() / self.update_frequency
                diagnostics[key] = diagnostics.get(key, 0.0) + share
        lr = self.optimizer.param_groups[0]["lr"]
        norm = optimizer_step(
            self.optimizer, [p for p in self.unwrapped_model.parameters() if p.grad is not None],
            self.scaler, self.max_grad_norm,
        )
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.num_updates += 1
        self._record_update(update_loss, components, diagnostics, task, lr, norm)

    # -- interval statistics --------------------------------------------------
    def _start_interval(self):
        self._interval = {"updates": 0, "loss": 0.0, "components": {}, "diagnostics": {},
                          "tasks": {}, "grad_norm": 0.0, "time": 0.0,
                          "first_update": self.num_updates + 1}

    def _record_update(self, loss, components, diagnostics, task, lr, norm):
        """``diagnostics``: the update's means of the scalars a model may return in
        ``output["diagnostics"]`` (e.g. codebook usage); logged like the loss components."""
        interval = self._interval
        interval["updates"] += 1
        interval["loss"] = interval["loss"] + loss
        for field, values in (("components", components), ("diagnostics", diagnostics)):
            for key, value in values.items():
                total, count = interval[field].get(key, (0.0, 0))
                interval[field][key] = (total + value, count + 1)
        if task is not None:
            total, count = interval["tasks"].get(task, (0.0, 0))
            interval["tasks"][task] = (total + loss, count + 1)
        if norm is not None:
            interval["grad_norm"] = interval["grad_norm"] + norm.detach().float()
        interval["lr"] = lr

    def _log_interval(self):
        interval = self._interval
        local = {
            "updates": interval["updates"],
            "loss": _to_float(interval["loss"]),
            "components": {k: (_to_float(s), c) for k, (s, c) in interval["components"].items()},
            "diagnostics": {
                k: (_to_float(s), c) for k, (s, c) in interval["diagnostics"].items()
            },
            "tasks": {k: (_to_float(s), c) for k, (s, c) in interval["tasks"].items()},
            "grad_norm": _to_float(interval["grad_norm"]),
        }
        everyone = distributed.gather_objects(local)

        def mean_of(field):
            merged = {}
            for part in everyone:
                for key, (total, count) in part[field].items():
                    old_total, old_count = merged.get(key, (0.0, 0))
                    merged[key] = (old_total + total, old_count + count)
            return {key: total / count for key, (total, count) in sorted(merged.items())}

        updates = sum(part["updates"] for part in everyone)
        loss = sum(part["loss"] for part in everyone) / updates
        if not math.isfinite(loss) and self._get("training.exit_on_nan", True):
            raise FloatingPointError(
                f"Training loss is {loss} in updates {interval['first_update']}-{self.num_updates}"
            )
        elapsed = max(interval["time"], 1e-9)
        samples = interval["updates"] * self.update_frequency * self.global_batch_size
        eta = elapsed / interval["updates"] * (self.max_updates - self.num_updates)
        record = {
            "update": self.num_updates,
            "max_updates": self.max_updates,
            "epoch": self.epoch,
            "loss": loss,
            "losses": mean_of("components"),
            "lr": interval["lr"],
            "lrs": [group["lr"] for group in self.optimizer.param_groups],
            "samples_per_s": samples / elapsed,
            "peak_memory_mb": peak_memory_mb(self.device),
            "eta_s": eta,
            "time": time.time(),
        }
        if interval["tasks"]:
            record["task_losses"] = mean_of("tasks")
        diagnostics = mean_of("diagnostics")  # over updates and ranks, like the losses
        if diagnostics:
            record["diagnostics"] = diagnostics
        if self.max_grad_norm is not None:
            record["grad_norm"] = sum(part["grad_norm"] for part in everyone) / updates
        parts = [f"update {self.num_updates}/{self.max_updates}", f"epoch {self.epoch}",
                 f"loss {loss:.4f}"]
        parts += [f"{key} {value:.4f}" for key, value in record["losses"].items()]
        parts += [f"task {key} {value:.4f}" for key, value in record.get("task_losses", {}).items()]
        parts += [f"{key} {value:.4f}" for key, value in diagnostics.items()]
        if "grad_norm" in record:
            parts.append(f"grad_norm {record['grad_norm']:.3f}")
        parts += [f"lr {interval['lr']:.3e}", f"{record['samples_per_s']:.1f} samples/s",
                  f"peak mem {record['peak_memory_mb']:.0f} MB", f"eta {_format_seconds(eta)}"]
        self._log(" | ".join(parts))
        self._append_json("train_log.jsonl", record)
        self._start_interval()

    # -- evaluation --------------------------------------------------------------
    def _validate(self):
        """Evaluates on val; tracks the best model; returns whether to stop early."""
        report = self.evaluate("val")
        criterion = self._get("training.best_metric")
        if criterion is not None:
            minimize = bool(self._get("training.best_metric_minimize", False))
        else:
            criterion = self._get("training.early_stop.criteria")
            minimize = bool(self._get("training.early_stop.minimize", True))
        if not criterion:
            return False
        values = {**report["losses"], **report["metrics"]}
        candidates = [criterion, f"val/{criterion}", f"val/{self.dataset_name}/{criterion}"]
        key = next((c for c in candidates if c in values), None)
        if key is None:
            self._log(f"Best-model criterion '{criterion}' is not in the evaluation report "
                      f"({', '.join(sorted(values))}): best.ckpt not tracked")
            return False
        value = values[key]
        improved = self.best is None or (
            value < self.best["value"] if minimize else value > self.best["value"]
        )
        if improved:
            self.best = {"key": key, "value": value, "update": self.num_updates}
            self._save(os.path.join(self.save_dir, "best.ckpt"), self._checkpoint_state())
            self._log(f"New best {key} = {value:.4f} at update {self.num_updates}: saved best.ckpt")
        patience = int(self._get("training.early_stop.patience", 0))
        if self._get("training.early_stop.enabled", False) and (
            self.num_updates - self.best["update"] >= patience
        ):
            self._log(f"Early stop: {key} has not improved for {patience} updates")
            return True
        return False

    def evaluate(self, split):
        """Evaluates the model on ``split`` on every rank; returns (on every rank)
        {"metrics": {...}, "losses": {...}, "num_samples": N} and, on rank 0,
        prints it and appends it to eval_log.jsonl. Global RNG states are
        restored afterwards, so evaluating never changes training randomness."""
        dataset = self.datasets[split]
        model = getattr(self, "unwrapped_model", self.model)
        rng_state = capture_rng_state(self.device)
        was_training = model.training
        model.eval()
        started = time.perf_counter()
        loss_sums, diagnostic_sums, metric_sums, collected = {}, {}, {}, {}
        num_samples = 0
        with torch.no_grad():
            for batch in self.loaders[split]:
                batch = self._prepare(batch, dataset)
                with self._autocast():
                    output = model(batch)
                size = batch.get_batch_size()
                num_samples += size
                for key, value in drop_skipped(output.get("losses") or {}).items():
                    loss_sums[key] = loss_sums.get(key, 0.0) + value.detach().float().mean() * size
                for key, value in (output.get("diagnostics") or {}).items():
                    diagnostic_sums[key] = (
                        diagnostic_sums.get(key, 0.0) + value.detach().float().mean() * size
                    )
                for name, metric in self.metrics.items():
                    if hasattr(metric, "collect") and hasattr(metric, "compute"):
                        for key, value in metric.collect(batch, output).items():
                            value = value.detach().cpu()
                            if value.is_floating_point():
                                value = value.float()
                            collected.setdefault(name, {}).setdefault(key, []).append(value)
                    else:
                        value = metric.calculate(batch, output)
                        metric_sums[name] = metric_sums.get(name, 0.0) + _to_float(value) * size
        model.train(was_training)

        local = {"num_samples": num_samples,
                 "losses": {k: _to_float(v) for k, v in loss_sums.items()},
                 "diagnostics": {k: _to_float(v) for k, v in diagnostic_sums.items()},
                 "metrics": metric_sums}
        everyone = distributed.gather_objects(local)
        gathered = {name: distributed.gather_variable({k: torch.cat(v) for k, v in parts.items()})
                    for name, parts in collected.items()}
        total = sum(part["num_samples"] for part in everyone)
        report = None
        if distributed.is_main_process():
            prefix = f"{split}/{self.dataset_name}"
            losses, diagnostics = {}, {}
            for part in everyone:  # sample-weighted means over all ranks' batches
                for key, value in part["losses"].items():
                    losses[key] = losses.get(key, 0.0) + value / total
                for key, value in part["diagnostics"].items():
                    diagnostics[key] = diagnostics.get(key, 0.0) + value / total
            if losses:
                losses[f"{split}/total_loss"] = sum(losses.values())
            metrics = {}
            for name, metric in self.metrics.items():
                if name in gathered:
                    rows = deduplicate_by_sample_index(gathered[name])
                    if getattr(metric, "needs_model", False):
                        with self._autocast():
                            values = metric.compute(rows, model=model)
                    else:
                        values = metric.compute(rows)
                    if isinstance(values, dict):
                        metrics.update(
                            {f"{prefix}/{name}/{k}": _to_float(v) for k, v in values.items()}
                        )
                    else:
                        metrics[f"{prefix}/{name}"] = _to_float(values)
                elif name in metric_sums:
                    weighted = sum(part["metrics"][name] for part in everyone)
                    metrics[f"{prefix}/{name}"] = weighted / total
            report = {"metrics": metrics, "losses": dict(sorted(losses.items())),
                      "diagnostics": dict(sorted(diagnostics.items())), "num_samples": total}
        report = distributed.broadcast_object(report)

        update = getattr(self, "num_updates", None)
        values = {**report["losses"], **report["metrics"], **report["diagnostics"]}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items())
        self._log(f"Evaluation on {split} ({total} samples, update {update}, "
                  f"{time.perf_counter() - started:.1f} s): {shown}")
        self._append_json("eval_log.jsonl", {
            "split": split, "dataset": self.dataset_name, "update": update,
            "epoch": getattr(self, "epoch", None), "num_samples": total,
            "metrics": report["metrics"], "losses": report["losses"],
            "diagnostics": report["diagnostics"], "time": time.time(),
        })
        restore_rng_state(rng_state, self.device)
        return report

    # -- checkpoints ----------------------------------------------------------------
    def _checkpoint_state(self):
        """The full training state; a collective (every rank's RNG state), so it
        is built on every rank and only rank 0 writes it."""
        rng_states = distributed.gather_objects(capture_rng_state(self.device))
        try:
            config = OmegaConf.to_container(self.config, resolve=True)
        except OmegaConfBaseException:
            config = OmegaConf.to_container(self.config, resolve=False)
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.unwrapped_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler else None,
            "update": self.num_updates,
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "global_batch_size": self.global_batch_size,
            "update_frequency": self.update_frequency,
            "world_size": self.world_size,
            "seed": self.seed,
            "rng": rng_states,
            "best": self.best,
            "config": config,
        }

    def _save(self, path, state):
        if distributed.is_main_process():
            save_atomic(state, path)

    def _save_checkpoints(self):
        """current.ckpt and models/model_{update}.ckpt (the last
        checkpoint.max_to_keep of them; -1 keeps all, 0 none)."""
        state = self._checkpoint_state()
        if not distributed.is_main_process():
            return
        current = os.path.join(self.save_dir, "current.ckpt")
        keep = int(self._get("checkpoint.max_to_keep", -1))
        if keep == 0:
            save_atomic(state, current)
        else:
            models_dir = os.path.join(self.save_dir, "models")
            snapshot = os.path.join(models_dir, f"model_{self.num_updates}.ckpt")
            save_atomic(state, snapshot)
            link = f"{current}.tmp{os.getpid()}"
            try:
                # A hard link avoids writing the same bytes twice.
                os.link(snapshot, link)
                os.replace(link, current)
            except OSError:
                if os.path.exists(link):
                    os.remove(link)
                save_atomic(state, current)
            if keep > 0:
                snapshots = sorted(
                    (f for f in os.listdir(models_dir)
                     if f.startswith("model_") and f.endswith(".ckpt")),
                    key=lambda f: int(f[len("model_"):-len(".ckpt")]),
                )
                for old in snapshots[:-keep]:
                    os.remove(os.path.join(models_dir, old))
        self._log(f"Saved checkpoint at update {self.num_updates} to {current}")
