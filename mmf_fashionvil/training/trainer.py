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
grad scaler, every rank's RNG states and the data position (see ``rng.py``).

Its parts: ``sampling.py`` (batches, loaders), ``optimization.py`` (optimizer, lr
schedules, the step), ``evaluation.py`` (metrics, one evaluation pass),
``checkpoints.py`` (files), ``run_log.py`` (interval statistics).
"""
import contextlib
import json
import os
import random
import sys
import time

import numpy as np
import torch
from mmf.common.registry import registry
from mmf.utils.build import build_model
from omegaconf import OmegaConf, open_dict

from mmf_fashionvil import CONFIGS_DIR, distributed
from mmf_fashionvil.modeling.losses import drop_skipped
from mmf_fashionvil.rng import (
    LOADER_STREAM,
    MODEL_STREAM,
    capture_rng_state,
    derived_seed,
    restore_rng_state,
)
from mmf_fashionvil.tasks import draw_task, parse_tasks
from mmf_fashionvil.training.checkpoints import (
    CHECKPOINT_FORMAT,
    RequiredWeights,
    apply_state_mapping,
    load_model_weights,
    model_state_from_checkpoint,
    plain_config,
    read_checkpoint,
    remove_interrupted_saves,
    save_atomic,
    save_numbered_checkpoint,
)
from mmf_fashionvil.training.evaluation import build_metrics, evaluate_split, report_key
from mmf_fashionvil.training.optimization import (
    build_lr_scheduler,
    build_optimizer,
    optimizer_step,
    restore_optimization,
)
from mmf_fashionvil.training.run_log import (
    IntervalStats,
    TensorBoardLog,
    format_seconds,
    peak_memory_mb,
)
from mmf_fashionvil.training.safety import (
    NonFiniteGuard,
    check_trainer_keys,
    parameters_are_finite,
)
from mmf_fashionvil.training.sampling import build_loader, loader_workers

MMF_DEFAULTS_YAML = os.path.join(CONFIGS_DIR, "mmf_defaults.yaml")


@registry.register_trainer("fashionvil_trainer")
class FashionViLTrainer:
    """``mmf_run`` calls ``load()`` then ``train()``.

    Config keys read (their defaults: ``mmf_fashionvil/configs/mmf_defaults.yaml``, which
    the config given is merged onto): run_type; model; datasets (one name);
    model_config.<model> (+ training_tasks, task_probabilities, pretrained_checkpoint);
    dataset_config.<dataset>; env.save_dir; training.{seed, batch_size (global),
    update_frequency, max_updates, max_epochs (whichever comes first), log_interval,
    checkpoint_interval, evaluation_interval, num_workers (auto: see sampling.loader_workers),
    pin_memory, device (cuda = when available), deterministic, compile, channels_last,
    amp.{enabled, dtype}, clip_gradients, max_grad_l2_norm,
    find_unused_parameters, progress_bar, exit_on_nan, best_metric, best_metric_minimize,
    early_stop.{enabled, criteria, minimize, patience}}; optimizer.{type, params};
    scheduler.{type, params}; evaluation.{metrics, batch_size (null: training.batch_size)};
    checkpoint.{resume, resume_file, resume_pretrained, resume_best,
    pretrained_state_mapping, max_to_keep (-1 = all), allow_unsafe_load}.

    Outputs in env.save_dir (rank 0): train_log.jsonl (one JSON record per log
    interval), eval_log.jsonl (one per evaluation), current.ckpt,
    models/model_<update>.ckpt, best.ckpt. Besides ``losses`` a model may return
    ``diagnostics`` ({name: scalar tensor}, e.g. codebook usage): they are averaged
    like the losses (over micro-batches, the log interval and the ranks in training,
    sample-weighted in evaluation) and logged under "diagnostics".
    """

    @classmethod
    def loaded_from_options(cls, opts):
        """A loaded trainer, in training mode, from ``mmf_run``-style ``key=value`` options:
        for programs that drive single steps (the throughput benchmark, tests)."""
        import argparse

        from mmf.utils.configuration import Configuration

        args = argparse.Namespace(opts=list(opts), config_override=None)
        trainer = cls(Configuration(args).get_config())
        trainer.load()
        trainer.model.train()
        trainer._train_iterator = None
        return trainer

    def __init__(self, config):
        # mmf_run's config is merged onto the defaults already; a config built in Python
        # may be partial, and the defaults file is the one place defaults live.
        defaults = OmegaConf.load(MMF_DEFAULTS_YAML)
        self.config = OmegaConf.merge(defaults, config)
        check_trainer_keys(self.config, defaults)
        self._bar = None  # the progress bar while training, when shown
        self._tensorboard = None  # TensorBoardLog, created at the first record

    def _get(self, key):
        return OmegaConf.select(self.config, key, default=None)

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
                checkpoint_path, bool(self._get("checkpoint.allow_unsafe_load"))
            )
            self._log(f"Loading {load_mode} state from {checkpoint_path}")
            if load_mode == "full" and checkpoint.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(
                    f"'{checkpoint_path}' was not written by fashionvil_trainer; to start "
                    "from its model weights only, set checkpoint.resume_pretrained=true"
                )
        self._setup_seed(checkpoint if load_mode == "full" else None)
        # Slows every step (~1.6x); rc10 turned it on always, we only on request.
        torch.autograd.set_detect_anomaly(bool(self._get("training.detect_anomaly")))
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
        self.metrics = build_metrics(self._get("evaluation.metrics"))

    def _setup_device(self):
        wanted = str(self._get("training.device"))
        if wanted.startswith("cuda") and torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", self._get("device_id")))
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
        self.run_type = str(self._get("run_type"))
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
        if self._get("evaluation.predict"):
            raise ValueError("evaluation.predict is not supported by fashionvil_trainer")
        self.final_splits = final_splits
        save_dir = str(self._get("env.save_dir"))
        self.save_dir = os.path.abspath(os.path.expanduser(save_dir))
        if distributed.is_main_process():
            os.makedirs(self.save_dir, exist_ok=True)
            removed = remove_interrupted_saves(self.save_dir)
            if removed:
                self._log(f"Removed {len(removed)} temporary file(s) of interrupted checkpoint "
                          f"saves: {', '.join(removed)}")
        self.log_interval = int(self._get("training.log_interval"))
        self.checkpoint_interval = int(self._get("training.checkpoint_interval"))
        self.evaluation_interval = int(self._get("training.evaluation_interval"))
        self.update_frequency = int(self._get("training.update_frequency"))
        for name in ("log_interval", "checkpoint_interval", "evaluation_interval",
                     "update_frequency"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        progress = str(self._get("training.progress_bar")).lower()
        self.show_progress = distributed.is_main_process() and (
            progress == "true" or (progress == "auto" and sys.stdout.isatty())
        )

    def _checkpoint_to_load(self):
        """(path, mode): mode "full" restores the whole training state, "model"
        the model weights strictly, "pretrained" the matching weights only."""
        resume = bool(self._get("checkpoint.resume"))
        resume_file = self._get("checkpoint.resume_file")
        pretrained = bool(self._get("checkpoint.resume_pretrained"))
        own_name = "best.ckpt" if self._get("checkpoint.resume_best") else "current.ckpt"
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
        # Separate from the seed: deterministic cuDNN kernels cost speed; benchmark mode picks
        # the fastest convolution algorithms (results then vary in the last bits).
        deterministic = bool(self._get("training.deterministic"))
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic

    def _build_datasets(self):
        names = self._get("datasets") or ""
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

        batch_size = int(self._get("training.batch_size"))
        if batch_size < 1 or batch_size % self.world_size:
            raise ValueError(
                f"training.batch_size ({batch_size}) is the global batch: it must be a "
                f"positive multiple of the number of ranks ({self.world_size})"
            )
        self.global_batch_size = batch_size
        eval_batch_size = int(self._get("evaluation.batch_size") or batch_size)
        if eval_batch_size < self.world_size:
            raise ValueError(
                f"evaluation.batch_size ({eval_batch_size}) is the global batch: it must "
                f"be at least the number of ranks ({self.world_size})"
            )

        self.loaders = {}
        for split, dataset in self.datasets.items():
            self.loaders[split] = build_loader(
                dataset, name, split, batch_size if split == "train" else eval_batch_size,
                self.rank, self.world_size, self.seed,
                loader_workers(self._get("training.num_workers"), self.device),
                bool(self._get("training.pin_memory")) and self.device.type == "cuda",
            )
        if self.training:
            self.train_sampler = self.loaders["train"].batch_sampler

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

    def _load_weights(self, checkpoint, path, require_all):
        state = model_state_from_checkpoint(checkpoint, path)
        if not require_all:
            state = apply_state_mapping(
                state, self._get("checkpoint.pretrained_state_mapping")
            )
        required = None if require_all else RequiredWeights(
            self._get("checkpoint.pretrained_min_share"), self._get("checkpoint.pretrained_core"))
        report = load_model_weights(self.model, state, path, require_all, required)
        for kind, names in report.items():
            if names:
                shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                self._log(f"Weights from {path}: {len(names)} {kind} key(s): {shown}")

    def _build_optimization(self):
        self.optimizer = build_optimizer(self.model, self.config)
        scheduler_config = self._get("scheduler")
        if scheduler_config is not None:
            scheduler_config = OmegaConf.to_container(scheduler_config, resolve=True)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, scheduler_config, self.max_updates)

        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        clip = bool(self._get("training.clip_gradients"))
        self.max_grad_norm = self._get("training.max_grad_l2_norm") if clip else None
        if self.max_grad_norm is not None:
            self.max_grad_norm = float(self.max_grad_norm)

    def _setup_amp(self):
        self.amp_dtype = None
        if not self._get("training.amp.enabled"):
            return
        name = str(self._get("training.amp.dtype")).lower()
        dtypes = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                  "fp16": torch.float16, "float16": torch.float16}
        if name not in dtypes:
            raise ValueError(f"training.amp.dtype must be bf16 or fp16, got '{name}'")
        if self.device.type == "cpu" and dtypes[name] == torch.float16:
            raise ValueError("training.amp.dtype=fp16 needs a GPU (its loss scaling is CUDA's); "
                             "use bf16 on CPU")
        self.amp_dtype = dtypes[name]

    def _reset_counters(self):
        self.num_updates = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best = None
        self._pending_rng = None

    def _restore(self, checkpoint, path):
        """Continues the checkpoint's run: weights, optimizer state (moments, step counts),
        schedule position, counters, data position and RNG states. The optimizer and
        scheduler *settings* are this config's, so a changed lr, weight decay or schedule
        applies from the next update (logged). ``checkpoint.reset.optimizer`` starts the
        optimizer and schedule afresh, ``reset.counts`` the counters, data order and RNG
        (update 0), ``reset.all`` both."""
        load_model_weights(self.model, checkpoint["model"], path, require_all=True)
        reset_all = bool(self._get("checkpoint.reset.all"))
        if not (reset_all or self._get("checkpoint.reset.optimizer")):
            changed = restore_optimization(checkpoint, self.optimizer, self.lr_scheduler,
                                           self.scaler)
            if changed:
                self._log(f"Optimizer settings changed since the checkpoint "
                          f"({', '.join(changed)}): the configured values apply from the next "
                          "update")
        if reset_all or self._get("checkpoint.reset.counts"):
            self._log(f"Weights from {path}; counters, data order and RNG start afresh "
                      "(checkpoint.reset)")
            return
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
        image_encoder = getattr(self.model, "image_encoder", None)
        if (self.device.type == "cuda" and self._get("training.channels_last")
                and hasattr(image_encoder, "use_channels_last")):
            image_encoder.use_channels_last()
        if self._get("training.compile"):
            # In place (nn.Module.compile): parameter names, and so checkpoints, stay as they
            # are; rc10's BaseModel computes the losses outside the compiled forward.
            self.model.compile()
        if self.world_size > 1 and self.training:
            find_unused = bool(self._get("training.find_unused_parameters"))
            if len(self.tasks) > 1 and not find_unused:
                # A step runs one task: the other heads get no gradient.
                self._log("Several training tasks: DDP find_unused_parameters turned on")
                find_unused = True
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused,
            )

    # -- logging --------------------------------------------------------------
    def _log(self, message):
        if not distributed.is_main_process():
            return
        line = f"[fashionvil_trainer] {message}"
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def _write_record(self, kind, record):
        """Appends a "train" or "eval" record to <save_dir>/<kind>_log.jsonl (and to
        TensorBoard with training.tensorboard), on rank 0."""
        if not distributed.is_main_process():
            return
        with open(os.path.join(self.save_dir, f"{kind}_log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._get("training.tensorboard"):
            if self._tensorboard is None:
                log_dir = self._get("env.tensorboard_logdir") or os.path.join(
                    self.save_dir, "tensorboard")
                self._tensorboard = TensorBoardLog(str(log_dir))
            getattr(self._tensorboard, f"write_{kind}")(record)

    # -- training ---------------------------------------------------------------
    def train(self):
        try:
            self._train_and_evaluate()
        finally:
            if self._tensorboard is not None:
                self._tensorboard.close()

    def _train_and_evaluate(self):
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
        self._interval = IntervalStats(self.num_updates + 1)
        self._guard = NonFiniteGuard(self.device)
        last_saved = last_evaluated = None
        stop = False
        self._log(f"Training from update {self.num_updates} to {self.max_updates} "
                  f"(global batch {self.global_batch_size} x {self.update_frequency} "
                  f"micro-batches, {self.world_size} rank(s), device {self.device})")
        while self.num_updates < self.max_updates and not stop:
            started = time.perf_counter()
            self._train_update()
            self._interval.time += time.perf_counter() - started
            if self._bar is not None:
                self._bar.update(1)
            update = self.num_updates
            if update % self.log_interval == 0 or update == self.max_updates:
                self._log_interval()
            evaluate = "val" in self.datasets and (
                update % self.evaluation_interval == 0 or update == self.max_updates)
            # The update's weights are on disk before anything can go wrong evaluating them.
            if evaluate or update % self.checkpoint_interval == 0 or update == self.max_updates:
                self._save_checkpoints()
                last_saved = update
            if evaluate:
                stop = self._validate()
                last_evaluated = update
        if self._interval.updates:
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
        differing = distributed.ranks_with_other_parameters(self.unwrapped_model)
        if differing:
            raise RuntimeError(f"Model parameters of rank(s) {differing} differ from rank 0's")
        self._log(f"Model parameters identical across {self.world_size} ranks")

    def _next_train_batch(self):
        dataset = self.datasets["train"]
        loader = self.loaders["train"]
        while True:
            if self._train_iterator is None:
                # The sampler's (epoch, index) pairs set the dataset's epoch (EpochItems).
                self.train_sampler.set_epoch(self.epoch, self.batches_in_epoch)
                loader.generator.manual_seed(derived_seed(self.seed, self.epoch, LOADER_STREAM))
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
        # Fields read from the batch's values are made while it is on the host (free here;
        # in the forward, on a GPU, reading them would make the step wait for the device).
        prepare_on_host = getattr(self.unwrapped_model, "prepare_batch_on_host", None)
        if prepare_on_host is not None:
            prepare_on_host(batch)
        if hasattr(dataset, "prepare_batch"):
            return dataset.prepare_batch(batch)
        return batch.to(self.device)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _current_task(self):
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
            # The model's random draws (masks, negatives): a host value, so no draw waits
            # for the device, and a function of the position, so a resumed run repeats them.
            batch.random_seed = derived_seed(self.seed, self.num_updates, micro_step,
                                             MODEL_STREAM)
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
        self._interval.record(update_loss, components, diagnostics, task, lr, norm)
        self._guard.record(self.num_updates, update_loss, task)

    # -- logging an interval ----------------------------------------------------
    def _log_interval(self):
        self._check_losses_finite("logging")
        interval = self._interval.merge()
        loss = interval["loss"]
        # Time and samples of this rank's updates (every rank runs the same number).
        elapsed = max(self._interval.time, 1e-9)
        samples = self._interval.updates * self.update_frequency * self.global_batch_size
        eta = elapsed / self._interval.updates * (self.max_updates - self.num_updates)
        record = {
            "update": self.num_updates,
            "max_updates": self.max_updates,
            "epoch": self.epoch,
            "loss": loss,
            "losses": interval["losses"],
            "lr": interval["lr"],
            "lrs": [group["lr"] for group in self.optimizer.param_groups],
            "samples_per_s": samples / elapsed,
            "peak_memory_mb": peak_memory_mb(self.device),
            "eta_s": eta,
            "time": time.time(),
        }
        if interval["task_losses"]:
            record["task_losses"] = interval["task_losses"]
        diagnostics = interval["diagnostics"]  # over updates and ranks, like the losses
        if diagnostics:
            record["diagnostics"] = diagnostics
        if self.max_grad_norm is not None:
            record["grad_norm"] = interval["grad_norm"]
        parts = [f"update {self.num_updates}/{self.max_updates}", f"epoch {self.epoch}",
                 f"loss {loss:.4f}"]
        parts += [f"{key} {value:.4f}" for key, value in record["losses"].items()]
        parts += [f"task {key} {value:.4f}" for key, value in record.get("task_losses", {}).items()]
        parts += [f"{key} {value:.4f}" for key, value in diagnostics.items()]
        if "grad_norm" in record:
            parts.append(f"grad_norm {record['grad_norm']:.3f}")
        parts += [f"lr {interval['lr']:.3e}", f"{record['samples_per_s']:.1f} samples/s",
                  f"peak mem {record['peak_memory_mb']:.0f} MB", f"eta {format_seconds(eta)}"]
        self._log(" | ".join(parts))
        self._write_record("train", record)
        self._interval = IntervalStats(self.num_updates + 1)

    # -- evaluation --------------------------------------------------------------
    def _validate(self):
        """Evaluates on val (the update's checkpoint is saved already); tracks the best
        model; returns whether to stop early."""
        try:
            report = self.evaluate("val")
        except Exception:
            self._log(f"Evaluation at update {self.num_updates} failed; the weights of update "
                      f"{self.num_updates} are saved in {self.save_dir}/current.ckpt "
                      "(continue with checkpoint.resume=true)")
            raise
        criterion = self._get("training.best_metric")
        if criterion is not None:
            minimize = bool(self._get("training.best_metric_minimize"))
        else:
            criterion = self._get("training.early_stop.criteria")
            minimize = bool(self._get("training.early_stop.minimize"))
        if not criterion:
            return False
        values = {**report["losses"], **report["metrics"]}
        key = report_key(values, criterion, "val", self.dataset_name)
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
            state = self._checkpoint_state()
            if state is not None:
                self._save(os.path.join(self.save_dir, "best.ckpt"), state)
                # The update's checkpoint was written before this evaluation: rewrite it so
                # that a resumed run knows this best value.
                self._save_checkpoints(state)
                self._log(f"New best {key} = {value:.4f} at update {self.num_updates}: "
                          "saved best.ckpt")
        patience = int(self._get("training.early_stop.patience"))
        if self._get("training.early_stop.enabled") and (
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
        batches = (self._prepare(batch, dataset) for batch in self.loaders[split])
        if self.show_progress:
            from tqdm import tqdm

            batches = tqdm(batches, total=len(self.loaders[split]), desc=f"evaluating {split}",
                           unit="batch", leave=False, dynamic_ncols=True)
        report = evaluate_split(model, batches, self.metrics, f"{split}/{self.dataset_name}",
                                self._autocast)
        model.train(was_training)
        total = report["num_samples"]

        update = getattr(self, "num_updates", None)
        values = {**report["losses"], **report["metrics"], **report["diagnostics"]}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items())
        self._log(f"Evaluation on {split} ({total} samples, update {update}, "
                  f"{time.perf_counter() - started:.1f} s): {shown}")
        self._write_record("eval", {
            "split": split, "dataset": self.dataset_name, "update": update,
            "epoch": getattr(self, "epoch", None), "num_samples": total,
            "metrics": report["metrics"], "losses": report["losses"],
            "diagnostics": report["diagnostics"], "time": time.time(),
        })
        restore_rng_state(rng_state, self.device)
        return report

    # -- checkpoints ----------------------------------------------------------------
    def _check_losses_finite(self, before):
        """Stops (``training.exit_on_nan``) or warns when a loss since the last check was not
        finite, naming the update and its task (a collective)."""
        found = self._guard.first_nonfinite_update()
        if found is None:
            return True
        update, task = found
        message = (f"The training loss became non-finite at update {update}"
                   f"{f' (task {task})' if task else ''}")
        if self._get("training.exit_on_nan"):
            raise FloatingPointError(
                f"{message}: stopped before {before}; checkpoints in {self.save_dir} are "
                "from before it (training.exit_on_nan=false would go on)")
        self._log(f"{message}; going on (training.exit_on_nan=false)")
        return False

    def _checkpoint_state(self):
        """The full training state, or None when it must not be saved: non-finite weights
        never overwrite a checkpoint. A collective (every rank's RNG state, the finiteness
        checks), so it is built on every rank and only rank 0 writes it."""
        self._check_losses_finite("saving a checkpoint")
        if not parameters_are_finite(self.unwrapped_model):
            message = f"Model weights are not finite at update {self.num_updates}"
            if self._get("training.exit_on_nan"):
                raise FloatingPointError(f"{message}: stopped without saving them")
            self._log(f"{message}: checkpoint not saved, the last finite one is kept")
            return None
        rng_states = distributed.gather_objects(capture_rng_state(self.device))
        config = plain_config(self.config)
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

    def _save_checkpoints(self, state=None):
        """current.ckpt and models/model_{update}.ckpt (the last
        checkpoint.max_to_keep of them; -1 keeps all, 0 none)."""
        state = state if state is not None else self._checkpoint_state()
        if state is not None and distributed.is_main_process():
            current = save_numbered_checkpoint(state, self.save_dir, self.num_updates,
                                               int(self._get("checkpoint.max_to_keep")))
            self._log(f"Saved checkpoint at update {self.num_updates} to {current}")
