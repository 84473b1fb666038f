"""Tests of fashionvil_trainer and mmf_fashionvil.distributed with the toy components of
toy_training.py."""
import copy
import math
import os
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from mmf_fashionvil import distributed
from mmf_fashionvil.tasks import draw_task
from mmf_fashionvil.training.checkpoints import read_checkpoint, save_atomic
from mmf_fashionvil.training.evaluation import deduplicate_by_sample_index
from mmf_fashionvil.training.optimization import (
    build_lr_scheduler, build_optimizer, optimizer_step, schedule_factor,
)
from mmf_fashionvil.training.sampling import (
    EvalBatchSampler, TrainBatchSampler, build_loader, loader_workers,
)
from mmf_fashionvil.training.trainer import FashionViLTrainer
from helpers import free_port, read_jsonl
from toy_training import (
    FEATURES,
    SimulatedKill,
    assert_same_parameters,
    make_config,
    parameters_of,
    run_trainer,
)


# ----------------------------------------------------------------------------
# Exact resume, update count, accumulation, schedules, clipping
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("update_frequency,kill_after", [(1, 4), (2, 3)])
def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path, update_frequency, kill_after):
    # (2, 3): the checkpoint falls exactly on an epoch end (24 samples = 6 batches).
    settings = [
        "training.max_updates=8", f"training.update_frequency={update_frequency}",
        f"training.checkpoint_interval={kill_after}", "training.evaluation_interval=2",
        "model_config.test_toy_model.dropout=0.3",
        "model_config.test_toy_model.training_tasks=[a,b]",
        "optimizer.type=AdamW", "optimizer.params.lr=0.05",
        "scheduler.type=warmup_cosine", "scheduler.params.num_warmup_steps=3",
    ]
    full = run_trainer(make_config(tmp_path / "full", *settings))

    killed_config = make_config(
        tmp_path / "resumed", *settings,
        f"model_config.test_toy_model.fail_at_forward={kill_after * update_frequency + 1}",
    )
    with pytest.raises(SimulatedKill):
        run_trainer(killed_config)
    resumed = run_trainer(make_config(tmp_path / "resumed", *settings, "checkpoint.resume=true"))

    expected = read_jsonl(tmp_path / "full" / "train_log.jsonl")
    got = read_jsonl(tmp_path / "resumed" / "train_log.jsonl")
    assert [r["update"] for r in got] == list(range(1, 9))
    assert [r["update"] for r in expected] == list(range(1, 9))
    for mine, reference in zip(got[kill_after:], expected[kill_after:]):
        assert abs(mine["loss"] - reference["loss"]) < 1e-6, mine["update"]
        assert mine["task_losses"].keys() == reference["task_losses"].keys()
    # The resumed run saw the samples the uninterrupted run saw after the kill.
    assert resumed.unwrapped_model.seen == full.unwrapped_model.seen[kill_after * update_frequency:]
    assert_same_parameters(parameters_of(resumed), parameters_of(full), atol=1e-6)


def test_evaluating_does_not_change_training(tmp_path):
    settings = ["model_config.test_toy_model.dropout=0.3", "training.max_updates=6"]
    evaluated = run_trainer(make_config(tmp_path / "often", *settings,
                                        "training.evaluation_interval=1"))
    run_trainer(make_config(tmp_path / "once", *settings))
    assert len(read_jsonl(tmp_path / "often" / "eval_log.jsonl")) == 6
    often = read_jsonl(tmp_path / "often" / "train_log.jsonl")
    once = read_jsonl(tmp_path / "once" / "train_log.jsonl")
    assert [r["loss"] for r in often] == [r["loss"] for r in once]
    assert evaluated.unwrapped_model.training


def test_runs_exactly_max_updates_and_logs_the_last_one(tmp_path):
    trainer = run_trainer(make_config(
        tmp_path, "training.max_updates=5", "training.update_frequency=2",
        "training.log_interval=2", "scheduler.type=warmup_linear",
        "scheduler.params.num_warmup_steps=1",
    ))
    assert trainer.num_updates == 5
    assert trainer.unwrapped_model.train_forwards == 10
    assert trainer.lr_scheduler.last_epoch == 5
    assert [r["update"] for r in read_jsonl(tmp_path / "train_log.jsonl")] == [2, 4, 5]
    assert read_checkpoint(str(tmp_path / "current.ckpt"))["update"] == 5
    # The final validation ran once, on the final model.
    evaluations = read_jsonl(tmp_path / "eval_log.jsonl")
    assert [(r["split"], r["update"]) for r in evaluations] == [("val", 5)]


def test_model_diagnostics_are_averaged_like_losses_and_logged(tmp_path, capsys):
    trainer = run_trainer(make_config(
        tmp_path, "training.max_updates=4", "training.update_frequency=2",
        "training.log_interval=2", "training.evaluation_interval=4",
        "model_config.test_toy_model.diagnostics=true",
    ))
    # 8 micro-batches of 4: each log record is the mean over its 2 updates x 2 micro-batches.
    batch_means = [sum(indices) / len(indices) for _, indices in trainer.unwrapped_model.seen]
    assert len(batch_means) == 8
    records = read_jsonl(tmp_path / "train_log.jsonl")
    assert [r["update"] for r in records] == [2, 4]
    for record, first in zip(records, (0, 4)):
        expected = sum(batch_means[first:first + 4]) / 4
        assert record["diagnostics"] == {"mean_sample_index": pytest.approx(expected, abs=1e-6)}
        assert "mean_sample_index" not in record["losses"]
    # Evaluation: val indices 0..6 in batches of 4 and 3, weighted by batch size -> 3.0
    # (the unweighted mean of the two batch means would be (1.5 + 5) / 2 = 3.25).
    (evaluation,) = read_jsonl(tmp_path / "eval_log.jsonl")
    assert evaluation["diagnostics"] == {"mean_sample_index": pytest.approx(3.0, abs=1e-6)}
    output = capsys.readouterr().out
    assert f"mean_sample_index {records[-1]['diagnostics']['mean_sample_index']:.4f}" in output
    assert "mean_sample_index 3.0000" in output


def test_no_diagnostics_key_without_model_diagnostics(tmp_path):
    run_trainer(make_config(tmp_path, "training.max_updates=2", "training.evaluation_interval=2"))
    assert all("diagnostics" not in r for r in read_jsonl(tmp_path / "train_log.jsonl"))
    assert read_jsonl(tmp_path / "eval_log.jsonl")[0]["diagnostics"] == {}


@pytest.mark.parametrize("limits,expected", [
    (["training.max_updates=null", "training.max_epochs=2"], 12),  # 24 samples / 4 = 6 a epoch
    (["training.max_updates=5", "training.max_epochs=2"], 5),
    (["training.max_updates=50", "training.max_epochs=1.5"], 9),
])
def test_max_epochs_and_max_updates_whichever_comes_first(tmp_path, limits, expected):
    trainer = FashionViLTrainer(make_config(tmp_path, *limits))
    trainer.load()
    assert trainer.max_updates == expected


def manual_sgd_step(trainer, sample_indices, lr, max_norm=None):
    """One SGD step by hand from the model's initial weights on the given samples."""
    model = copy.deepcopy(trainer.unwrapped_model)
    model.load_state_dict(model.initial_state)
    dataset = trainer.datasets["train"]
    dataset.set_epoch(0)
    x = torch.stack([dataset[i].x for i in sample_indices])
    y = torch.stack([dataset[i].targets for i in sample_indices])
    loss = ((model.heads["a"](model.body(x))[:, 0] - y) ** 2).mean()
    model.zero_grad()
    loss.backward()
    norm = None
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:  # head "b" is unused
                p -= lr * p.grad
    return {k: v.detach() for k, v in model.state_dict().items()}, norm


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    accumulated = run_trainer(make_config(
        tmp_path / "accumulated", "training.max_updates=1", "training.update_frequency=2",
        "training.batch_size=4", "optimizer.params.lr=0.1",
    ))
    large = run_trainer(make_config(
        tmp_path / "large", "training.max_updates=1", "training.batch_size=8",
        "optimizer.params.lr=0.1",
    ))
    accumulated_samples = sum((s for _, s in accumulated.unwrapped_model.seen), [])
    large_samples = large.unwrapped_model.seen[0][1]
    assert len(accumulated.unwrapped_model.seen) == 2 and len(accumulated_samples) == 8
    assert sorted(accumulated_samples) == sorted(large_samples)

    expected, _ = manual_sgd_step(large, large_samples, lr=0.1)
    assert_same_parameters(parameters_of(large), expected, atol=1e-6)
    assert_same_parameters(parameters_of(accumulated), expected, atol=1e-6)


def test_schedule_factors_match_hand_computed_values():
    # W = 2 warm-up updates, T = 6 updates.
    linear = [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    cosine = [0.5, 1.0, 1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2]
    multistep = [0.5, 1.0, 1.0, 0.1, 0.1, 0.01]
    for update in range(6):
        assert schedule_factor("warmup_linear", update, 2, 6) == pytest.approx(linear[update])
        assert schedule_factor("warmup_cosine", update, 2, 6) == pytest.approx(cosine[update])
        assert schedule_factor("warmup_multistep", update, 2, 6, milestones=[3, 5],
                               gamma=0.1) == pytest.approx(multistep[update])


def test_warmup_start_factor_starts_the_line_there_and_is_checked():
    # Start factor 0.25, W = 4: 0.25 + 0.75 * (u + 1) / 4 for u < 4, then x0.1 from update 5.
    expected = [0.4375, 0.625, 0.8125, 1.0, 1.0, 0.1]
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.2)
    scheduler = build_lr_scheduler(optimizer, {"type": "warmup_multistep", "params": {
        "num_warmup_steps": 4, "milestones": [5], "warmup_start_factor": 0.25}}, 6)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.2 * f for f in expected])
    with pytest.raises(ValueError, match="warmup_start_factor must be in \\[0, 1\\], got 1.5"):
        build_lr_scheduler(optimizer, {"type": "warmup_cosine", "params": {
            "num_warmup_steps": 4, "warmup_start_factor": 1.5}}, 6)


@pytest.mark.parametrize("kind,factors", [
    ("warmup_linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
    ("warmup_cosine", [0.5, 1.0, 1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2]),
])
def test_trainer_runs_update_u_at_base_lr_times_factor_u(tmp_path, kind, factors):
    # num_training_steps defaults to training.max_updates (6).
    run_trainer(make_config(
        tmp_path, "optimizer.params.lr=0.01", f"scheduler.type={kind}",
        "scheduler.params.num_warmup_steps=2",
    ))
    logged = [r["lr"] for r in read_jsonl(tmp_path / "train_log.jsonl")]
    assert logged == pytest.approx([0.01 * f for f in factors])


def test_clipping_uses_unscaled_gradients():
    torch.manual_seed(0)
    weights = torch.randn(5)
    target = torch.randn(5)

    def loss_of(p):
        return ((p * weights - target) ** 2).sum()

    start = torch.randn(5)
    reference = start.clone().requires_grad_(True)
    loss_of(reference).backward()
    torch.nn.utils.clip_grad_norm_([reference], 0.5)
    expected = (reference - 0.1 * reference.grad).detach()

    parameter = nn.Parameter(start.clone())
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(loss_of(parameter)).backward()
    norm = optimizer_step(optimizer, [parameter], scaler, max_grad_norm=0.5)
    assert norm > 0.5  # the clip was active
    assert torch.allclose(parameter.detach(), expected, atol=1e-6)


def test_trainer_clips_the_global_gradient_norm(tmp_path):
    trainer = run_trainer(make_config(
        tmp_path, "training.max_updates=1", "training.clip_gradients=true",
        "training.max_grad_l2_norm=0.05", "optimizer.params.lr=1.0",
    ))
    expected, norm = manual_sgd_step(trainer, trainer.unwrapped_model.seen[0][1], 1.0, 0.05)
    assert norm > 0.05
    assert_same_parameters(parameters_of(trainer), expected, atol=1e-6)
    assert read_jsonl(tmp_path / "train_log.jsonl")[0]["grad_norm"] == pytest.approx(float(norm))


# ----------------------------------------------------------------------------
# Samplers, tasks, metric gathering helpers
# ----------------------------------------------------------------------------
def test_train_sampler_global_batches_do_not_depend_on_world_size():
    single = TrainBatchSampler(10, 4, rank=0, world_size=1, seed=3)
    ranks = [TrainBatchSampler(10, 4, rank=r, world_size=2, seed=3) for r in range(2)]
    for epoch in (0, 1):
        for sampler in [single, *ranks]:
            sampler.set_epoch(epoch)
        global_batches = list(single)
        assert len(global_batches) == 2  # 10 // 4, the remainder is dropped
        per_rank = [list(s) for s in ranks]
        for step, batch in enumerate(global_batches):
            assert per_rank[0][step] + per_rank[1][step] == batch
        assert len(set(sum(global_batches, []))) == 8
    single.set_epoch(0)
    first_epoch = list(single)
    single.set_epoch(1)
    assert list(single) != first_epoch
    single.set_epoch(0, start_batch=1)
    assert len(single) == 1 and list(single) == first_epoch[1:]


def test_persistent_loader_workers_read_each_epochs_items(tmp_path):
    """A worker keeps its copy of the dataset across epochs: the epoch must travel with the
    indices (EpochItems), or items of epoch 1 would repeat epoch 0's augmentation."""
    from mmf.common.registry import registry
    from toy_training import ToyDataset
    from omegaconf import OmegaConf

    registry.register("seed", 7)
    config = OmegaConf.create({"sizes": {"train": 8}, "augment": 0.5})
    dataset = ToyDataset(config, "train")
    loader = build_loader(dataset, "test_toy", "train", 4, 0, 1, 7, num_workers=1,
                          pin_memory=False)
    assert loader.persistent_workers
    for epoch in (0, 1, 0):
        loader.batch_sampler.set_epoch(epoch)
        order = [index for batch in loader.batch_sampler for _, index in batch]
        inputs = torch.cat([batch.x for batch in loader])
        reference = ToyDataset(config, "train")  # read in this process, epoch set by hand
        reference.set_epoch(epoch)
        assert torch.equal(inputs, torch.stack([reference[i].x for i in order])), epoch


def test_loader_workers_auto_is_the_cores_left_after_the_compute_threads(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert loader_workers("auto", cpu) == 6  # 8 cores - 2 intra-op threads
    assert loader_workers("auto", cuda) == 7  # one core drives the GPU
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader_workers("auto", cpu) == 2  # 4 cores per rank - 2 threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert loader_workers("auto", cpu) == 0
    assert loader_workers(3, cpu) == 3
    with pytest.raises(ValueError, match="training.num_workers"):
        loader_workers(-1, cpu)


def test_optimizers_run_fused_where_torch_has_the_kernel():
    model = nn.Linear(3, 2)
    config = OmegaConf.create({"optimizer": {"type": "AdamW", "params": {"lr": 0.1}}})
    assert build_optimizer(model, config).defaults["fused"] is True
    config.optimizer.params.fused = False
    assert build_optimizer(model, config).defaults["fused"] is False
    config = OmegaConf.create({"optimizer": {"type": "RMSprop", "params": {"lr": 0.1}}})
    assert "fused" not in build_optimizer(model, config).defaults  # torch has no fused one


def test_deterministic_kernels_are_a_switch_of_their_own(tmp_path):
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        FashionViLTrainer(make_config(tmp_path / "a")).load()  # seeded (seed 7), default
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (
            False, True)
        FashionViLTrainer(make_config(tmp_path / "b", "training.deterministic=true")).load()
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (
            True, False)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def test_fp16_autocast_on_cpu_is_refused_and_bf16_runs(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        FashionViLTrainer(make_config(tmp_path / "a", "training.amp.enabled=true",
                                      "training.amp.dtype=fp16")).load()
    trainer = run_trainer(make_config(tmp_path / "b", "training.amp.enabled=true"))
    assert trainer.amp_dtype == torch.bfloat16
    assert [r["update"] for r in read_jsonl(tmp_path / "b" / "train_log.jsonl")] == [
        1, 2, 3, 4, 5, 6]


def test_eval_sampler_covers_every_sample_once_with_equal_batch_counts():
    for num_samples, batch_size, world_size in [(7, 2, 2), (9, 4, 2), (10, 3, 3), (5, 8, 1)]:
        samplers = [EvalBatchSampler(num_samples, batch_size, r, world_size)
                    for r in range(world_size)]
        assert len({len(s) for s in samplers}) == 1
        flat = [i for s in samplers for batch in s for i in batch]
        assert flat == list(range(num_samples))
        assert all(0 < len(b) <= batch_size for s in samplers for b in s)
    with pytest.raises(ValueError, match="evaluation samples"):
        EvalBatchSampler(1, 4, 0, 2)


def test_task_draws_follow_probabilities_and_depend_only_on_seed_and_update():
    tasks = ["a", "b"]
    draws = [draw_task(5, update, tasks, [0.25, 0.75]) for update in range(4000)]
    assert abs(draws.count("b") / len(draws) - 0.75) < 0.03
    assert draws[:50] == [draw_task(5, update, tasks, [0.25, 0.75]) for update in range(50)]
    assert draws[:50] != [draw_task(6, update, tasks, [0.25, 0.75]) for update in range(50)]


def test_each_update_runs_one_task_and_logs_its_loss(tmp_path):
    trainer = run_trainer(make_config(
        tmp_path, "training.max_updates=12", "training.update_frequency=2",
        "model_config.test_toy_model.training_tasks=[a,b]",
        "model_config.test_toy_model.task_probabilities=[0.5,0.5]",
    ))
    seen_tasks = [task for task, _ in trainer.unwrapped_model.seen]
    per_update = [seen_tasks[i: i + 2] for i in range(0, 24, 2)]
    assert all(pair[0] == pair[1] for pair in per_update)
    assert {pair[0] for pair in per_update} == {"a", "b"}
    for record, pair in zip(read_jsonl(tmp_path / "train_log.jsonl"), per_update):
        assert record["task_losses"] == {pair[0]: pytest.approx(record["loss"])}


def test_deduplicate_by_sample_index_sorts_and_keeps_first_rows():
    collected = {
        "sample_index": torch.tensor([3, 1, 3, 0]),
        "value": torch.tensor([30.0, 10.0, 31.0, 0.0]),
        "flat_rows": torch.arange(6),
    }
    result = deduplicate_by_sample_index(collected)
    assert result["sample_index"].tolist() == [0, 1, 3]
    assert result["value"].tolist() == [0.0, 10.0, 30.0]
    assert result["flat_rows"].tolist() == list(range(6))


# ----------------------------------------------------------------------------
# Checkpoints and evaluation
# ----------------------------------------------------------------------------
def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "current.ckpt")
    save_atomic({"update": 1, "w": torch.ones(3)}, path)

    def crash_midway(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"update": 2}, path)
    monkeypatch.undo()
    assert read_checkpoint(path)["update"] == 1
    assert os.listdir(tmp_path) == ["current.ckpt"]


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "current.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="current.ckpt"):
        read_checkpoint(str(path))


def test_keeps_the_last_max_to_keep_snapshots(tmp_path):
    run_trainer(make_config(tmp_path, "training.checkpoint_interval=1", "checkpoint.max_to_keep=2"))
    assert sorted(os.listdir(tmp_path / "models")) == ["model_5.ckpt", "model_6.ckpt"]
    current = read_checkpoint(str(tmp_path / "current.ckpt"))
    assert current["update"] == 6
    for key in ("model", "optimizer", "lr_scheduler", "grad_scaler", "rng", "epoch",
                "batches_in_epoch", "config"):
        assert key in current


def test_best_checkpoint_holds_the_best_validation_model(tmp_path):
    run_trainer(make_config(
        tmp_path, "training.max_updates=8", "training.evaluation_interval=1",
        "training.best_metric=test_dataset_stats/mse", "training.best_metric_minimize=true",
        "optimizer.params.lr=0.3",
    ))
    evaluations = read_jsonl(tmp_path / "eval_log.jsonl")
    assert [r["update"] for r in evaluations] == list(range(1, 9))
    key = "val/test_toy/test_dataset_stats/mse"
    best = min(evaluations, key=lambda r: r["metrics"][key])
    checkpoint = read_checkpoint(str(tmp_path / "best.ckpt"))
    assert checkpoint["update"] == best["update"]
    assert checkpoint["best"]["value"] == pytest.approx(best["metrics"][key])


def test_early_stop_when_the_metric_stops_improving(tmp_path):
    # lr 0: the model never changes, so the metric never improves after the first evaluation.
    trainer = run_trainer(make_config(
        tmp_path, "training.max_updates=10", "training.evaluation_interval=1",
        "training.early_stop.enabled=true", "training.early_stop.patience=2",
        "training.early_stop.criteria=test_dataset_stats/mse", "optimizer.params.lr=0.0",
    ))
    assert trainer.num_updates == 3
    assert read_checkpoint(str(tmp_path / "current.ckpt"))["update"] == 3


def test_evaluation_run_loads_only_the_model(tmp_path):
    trained = run_trainer(make_config(tmp_path / "train"))
    evaluation = run_trainer(make_config(
        tmp_path / "test", "run_type=test",
        f"checkpoint.resume_file={tmp_path / 'train' / 'current.ckpt'}",
    ))
    assert_same_parameters(parameters_of(evaluation), parameters_of(trained), atol=0)
    assert not hasattr(evaluation, "optimizer")
    (record,) = read_jsonl(tmp_path / "test" / "eval_log.jsonl")
    assert record["split"] == "test" and record["num_samples"] == 7
    metrics = record["metrics"]
    assert metrics["test/test_toy/test_dataset_stats/count"] == 7
    assert metrics["test/test_toy/test_dataset_stats/index_sum"] == sum(range(7))
    assert metrics["test/test_toy/test_dataset_stats/ascending"] == 1.0
    # Single process: the per-batch MAE, weighted by batch size, is the dataset MAE.
    dataset = evaluation.datasets["test"]
    model = evaluation.unwrapped_model.eval()
    with torch.no_grad():
        scores = model.heads["a"](model.body(dataset.inputs))[:, 0]
    assert metrics["test/test_toy/test_batch_mae"] == pytest.approx(
        float((scores - dataset.labels).abs().mean()), abs=1e-6)
    assert metrics["test/test_toy/test_dataset_stats/mse"] == pytest.approx(
        float(((scores - dataset.labels) ** 2).mean()), abs=1e-6)


@pytest.mark.parametrize("via_model_config", [False, True])
def test_pretrained_weights_load_where_they_fit(tmp_path, capsys, via_model_config):
    pretrained = run_trainer(make_config(tmp_path / "pretrain"))
    path = tmp_path / "pretrain" / "current.ckpt"
    source = ([f"model_config.test_toy_model.pretrained_checkpoint={path}"] if via_model_config
              else [f"checkpoint.resume_file={path}", "checkpoint.resume_pretrained=true"])
    capsys.readouterr()
    finetune = FashionViLTrainer(make_config(
        tmp_path / "finetune", "model_config.test_toy_model.out_b=3", *source))
    finetune.load()
    assert finetune.num_updates == 0
    loaded, original = parameters_of(finetune), parameters_of(pretrained)
    for key in original:
        if key.startswith("heads.b."):
            assert loaded[key].shape[0] == 3  # kept its own initialisation
        else:
            assert torch.equal(loaded[key], original[key])
    assert "2 mismatched key(s): heads.b.weight, heads.b.bias" in capsys.readouterr().out


def test_pretrained_state_mapping_loads_only_the_mapped_prefixes(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"encoder.0.weight": torch.full((8, FEATURES), 2.0),
                "encoder.0.bias": torch.full((8,), 3.0),
                "classifier.weight": torch.zeros(1, 8)}, path)
    trainer = FashionViLTrainer(make_config(
        tmp_path / "run", f"checkpoint.resume_file={path}", "checkpoint.resume_pretrained=true",
        "checkpoint.pretrained_state_mapping.body=encoder",
    ))
    trainer.load()
    model = trainer.unwrapped_model
    assert torch.equal(model.body[0].weight, torch.full((8, FEATURES), 2.0))
    assert torch.equal(model.body[0].bias, torch.full((8,), 3.0))
    assert torch.equal(model.heads["a"].weight, model.initial_state["heads.a.weight"])


def test_full_resume_from_a_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"model": {"body.0.weight": torch.zeros(8, FEATURES)}}, path)
    with pytest.raises(ValueError, match="resume_pretrained"):
        FashionViLTrainer(make_config(tmp_path / "run", f"checkpoint.resume_file={path}")).load()


@pytest.mark.parametrize("setting,message", [
    ("datasets=test_missing_dataset", "Registered: .*test_toy"),
    ("model=test_missing_model", "Registered: .*test_toy_model"),
    ("evaluation.metrics=[test_missing_metric]", "Registered: .*test_batch_mae"),
    ("training.batch_size=0", "training.batch_size"),
])
def test_configuration_errors_name_the_problem(tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        FashionViLTrainer(make_config(tmp_path, setting)).load()


# ----------------------------------------------------------------------------
# Two ranks (gloo, CPU), spawned once for several tests
# ----------------------------------------------------------------------------
DDP_SETTINGS = [
    "training.max_updates=6", "training.update_frequency=2", "training.checkpoint_interval=3",
    "training.evaluation_interval=3",
    "model_config.test_toy_model.losses=[{type: test_mse}, {type: test_centering}]",
    "model_config.test_toy_model.training_tasks=[a,b]",
    "model_config.test_toy_model.diagnostics=true",
]


def _two_rank_worker(rank, world_size, port, out_dir):
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    sys.stdout = open(os.path.join(out_dir, f"stdout_rank{rank}.txt"), "w", buffering=1)
    # The trainer initialises the process group from the torchrun-style environment.
    trainer = run_trainer(make_config(os.path.join(out_dir, "run"), *DDP_SETTINGS))
    torch.save({"parameters": parameters_of(trainer), "seen": trainer.unwrapped_model.seen,
                "ddp": type(trainer.model).__name__},
               os.path.join(out_dir, f"trainer_rank{rank}.pt"))

    # Distributed primitives, with different row counts per rank.
    rows = 3 - rank
    generator = torch.Generator().manual_seed(rank)
    local = torch.randn(rows, 2, generator=generator, requires_grad=True)
    weights = torch.randn(5, 2, generator=generator)
    gathered = distributed.all_gather_with_grad(local)
    ((weights * gathered).sum() + (local ** 2).sum()).backward()
    variable = distributed.gather_variable(
        {"index": torch.arange(rows) + 10 * rank, "rows": torch.full((rows, 2), float(rank))}
    )
    primitives = {
        "gathered": gathered.detach(), "grad": local.grad,
        "variable": variable,
        "broadcast": distributed.broadcast_object({"from": rank}),
        "objects": distributed.gather_objects(rank * 2),
    }
    torch.save(primitives, os.path.join(out_dir, f"primitives_rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("two_ranks"))
    context = torch.multiprocessing.spawn(
        _two_rank_worker, args=(2, free_port(), out_dir), nprocs=2, join=False
    )
    deadline = time.time() + 240
    while not context.join(timeout=5):
        if time.time() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("two-rank run did not finish in 240 s (deadlock?)")
    return out_dir


def test_two_ranks_primitives(two_rank_run):
    parts = [torch.load(os.path.join(two_rank_run, f"primitives_rank{r}.pt")) for r in range(2)]
    # Single-process reference: the same inputs and per-rank losses on one machine.
    inputs, weights = [], []
    for rank in range(2):
        generator = torch.Generator().manual_seed(rank)
        inputs.append(torch.randn(3 - rank, 2, generator=generator))
        weights.append(torch.randn(5, 2, generator=generator))
    everything = torch.cat(inputs).requires_grad_(True)
    total = sum((w * everything).sum() for w in weights) + (everything ** 2).sum()
    total.backward()
    expected_grads = everything.grad.split([3, 2])
    for rank, part in enumerate(parts):
        assert torch.equal(part["gathered"], everything.detach())
        assert torch.allclose(part["grad"], expected_grads[rank], atol=1e-6)
        assert part["variable"]["index"].tolist() == [0, 1, 2, 10, 11]
        assert part["variable"]["rows"][:, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
        assert part["broadcast"] == {"from": 0}
        assert part["objects"] == [0, 2]


def test_two_ranks_train_like_one_process_with_the_same_global_batch(two_rank_run, tmp_path):
    ranks = [torch.load(os.path.join(two_rank_run, f"trainer_rank{r}.pt")) for r in range(2)]
    assert ranks[0]["ddp"] == "DistributedDataParallel"
    assert_same_parameters(ranks[0]["parameters"], ranks[1]["parameters"], atol=0)
    # Same task on both ranks at every step, disjoint halves of each global batch.
    assert [t for t, _ in ranks[0]["seen"]] == [t for t, _ in ranks[1]["seen"]]
    for (_, first), (_, second) in zip(ranks[0]["seen"], ranks[1]["seen"]):
        assert len(first) == len(second) == 2 and not set(first) & set(second)

    single = run_trainer(make_config(tmp_path / "single", *DDP_SETTINGS))
    assert_same_parameters(ranks[0]["parameters"], parameters_of(single), atol=1e-5)
    two_rank_log = read_jsonl(os.path.join(two_rank_run, "run", "train_log.jsonl"))
    single_log = read_jsonl(tmp_path / "single" / "train_log.jsonl")
    assert [r["update"] for r in two_rank_log] == list(range(1, 7))  # rank 1 wrote nothing
    for mine, reference in zip(two_rank_log, single_log):
        assert mine["loss"] == pytest.approx(reference["loss"], abs=1e-5)
        # Mean over ranks of each half-batch's mean index = the whole batch's mean.
        assert mine["diagnostics"]["mean_sample_index"] == pytest.approx(
            reference["diagnostics"]["mean_sample_index"], abs=1e-6
        )


def test_two_ranks_only_rank0_logs_and_metrics_cover_the_whole_split(two_rank_run, tmp_path):
    with open(os.path.join(two_rank_run, "stdout_rank1.txt")) as f:
        assert f.read() == ""
    with open(os.path.join(two_rank_run, "stdout_rank0.txt")) as f:
        output = f.read()
    assert "update 6/6" in output
    assert "parameters identical across 2 ranks" in output
    evaluations = read_jsonl(os.path.join(two_rank_run, "run", "eval_log.jsonl"))
    assert [r["update"] for r in evaluations] == [3, 6]
    distributed_metrics = evaluations[-1]["metrics"]
    assert distributed_metrics["val/test_toy/test_dataset_stats/count"] == 7
    assert distributed_metrics["val/test_toy/test_dataset_stats/index_sum"] == sum(range(7))
    assert distributed_metrics["val/test_toy/test_dataset_stats/ascending"] == 1.0

    # One process evaluating the checkpoint the two ranks wrote.
    run_trainer(make_config(
        tmp_path, "run_type=val", *DDP_SETTINGS,
        f"checkpoint.resume_file={os.path.join(two_rank_run, 'run', 'current.ckpt')}",
    ))
    (single,) = read_jsonl(tmp_path / "eval_log.jsonl")
    assert single["metrics"].keys() == distributed_metrics.keys()
    for key, value in single["metrics"].items():
        assert distributed_metrics[key] == pytest.approx(value, abs=1e-6), key


def test_a_single_training_task_needs_no_probability_entry():
    from omegaconf import OmegaConf

    from mmf_fashionvil.tasks import parse_tasks

    config = OmegaConf.create({"training_tasks": ["xmr"], "task_probabilities": {"itc": 0.5, "mlm": 0.5}})
    assert parse_tasks(config) == (["xmr"], [1.0])
    config = OmegaConf.create({"training_tasks": ["itc", "xmr"], "task_probabilities": {"itc": 0.5}})
    with pytest.raises(ValueError, match="no entry for training task"):
        parse_tasks(config)


def test_tensorboard_holds_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_trainer(make_config(tmp_path, "training.max_updates=4", "training.log_interval=2",
                            "training.evaluation_interval=2", "training.tensorboard=true",
                            "model_config.test_toy_model.training_tasks=[a,b]"))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    train = read_jsonl(tmp_path / "train_log.jsonl")
    evaluations = read_jsonl(tmp_path / "eval_log.jsonl")

    def series(tag):
        return [(event.step, event.value) for event in events.Scalars(tag)]

    assert series("train/loss") == [(r["update"], pytest.approx(r["loss"])) for r in train]
    assert series("train/lr") == [(r["update"], pytest.approx(r["lr"])) for r in train]
    for task in ("a", "b"):
        logged = [(r["update"], pytest.approx(r["task_losses"][task]))
                  for r in train if task in r["task_losses"]]
        assert series(f"train/task_losses/{task}") == logged
    key = "val/test_toy/test_dataset_stats/mse"
    assert series(key) == [(r["update"], pytest.approx(r["metrics"][key])) for r in evaluations]
    assert {"train/samples_per_s", "train/peak_memory_mb"} <= set(events.Tags()["scalars"])


def test_no_tensorboard_files_unless_asked(tmp_path):
    run_trainer(make_config(tmp_path, "training.max_updates=2"))
    assert not (tmp_path / "tensorboard").exists()


def test_progress_bars_for_training_and_evaluation_when_asked(tmp_path, capsys):
    run_trainer(make_config(tmp_path, "training.max_updates=2", "training.progress_bar=true"))
    shown = capsys.readouterr().err
    assert "2/2" in shown and "update" in shown  # the training bar
    assert "evaluating val" in shown and "batch" in shown
    run_trainer(make_config(tmp_path / "quiet", "training.max_updates=2"))
    assert "evaluating val" not in capsys.readouterr().err  # auto: not a terminal
