"""Faults injected into fashionvil_trainer runs (toy components of toy_training.py): kills
mid-save, non-finite losses, evaluation crashes, a full disk, a dead rank; and configuration
keys that must not lie (README keys exist, unknown or unsupported keys are errors, a resume
applies a changed lr, checkpoint.reset.*)."""
import errno
import math
import multiprocessing
import os
import re
import subprocess
import sys
import time
import types

import pytest
import torch
from omegaconf import OmegaConf

from helpers import REPO, free_port, read_jsonl
from mmf_fashionvil.training import checkpoints
from mmf_fashionvil.training.checkpoints import read_checkpoint
from mmf_fashionvil.training.trainer import MMF_DEFAULTS_YAML, FashionViLTrainer
from toy_training import make_config, run_trainer

TESTS = os.path.dirname(os.path.abspath(__file__))


def is_finite_checkpoint(path):
    state = read_checkpoint(str(path))["model"]
    return all(torch.isfinite(value).all() for value in state.values())


# ------------------------------------------------------------------------ non-finite
def test_nan_stops_the_run_and_keeps_the_finite_checkpoints(tmp_path, capsys):
    # Checkpoints every update, the loss logged every 5: NaN from update 4 on.
    settings = ["training.max_updates=8", "training.log_interval=5",
                "training.checkpoint_interval=1", "checkpoint.max_to_keep=2",
                "model_config.test_toy_model.training_tasks=[a,b]"]
    with pytest.raises(FloatingPointError, match=r"non-finite at update 4 \(task [ab]\)"):
        run_trainer(make_config(tmp_path, *settings, "model_config.test_toy_model.nan_from_update=4"))
    snapshots = sorted(os.listdir(tmp_path / "models"))
    assert snapshots == ["model_2.ckpt", "model_3.ckpt"]  # nothing pruned for a NaN one
    assert read_checkpoint(str(tmp_path / "current.ckpt"))["update"] == 3
    assert all(is_finite_checkpoint(tmp_path / "models" / name) for name in snapshots)
    # The kept checkpoint resumes (without the divergence) to the end.
    resumed = run_trainer(make_config(tmp_path, *settings, "checkpoint.resume=true"))
    assert resumed.num_updates == 8 and is_finite_checkpoint(tmp_path / "current.ckpt")


def test_with_exit_on_nan_off_the_run_goes_on_but_never_saves_non_finite_weights(tmp_path,
                                                                                    capsys):
    trainer = run_trainer(make_config(
        tmp_path, "training.max_updates=6", "training.checkpoint_interval=2",
        "training.exit_on_nan=false", "model_config.test_toy_model.nan_from_update=3"))
    assert trainer.num_updates == 6
    assert read_checkpoint(str(tmp_path / "current.ckpt"))["update"] == 2
    assert os.listdir(tmp_path / "models") == ["model_2.ckpt"]
    output = capsys.readouterr().out
    assert "non-finite at update 3" in output and "checkpoint not saved" in output


# -------------------------------------------------------------------- evaluation crash
def test_an_evaluation_crash_leaves_the_updates_checkpoint(tmp_path, capsys):
    with pytest.raises(OSError, match="broken.png"):
        run_trainer(make_config(
            tmp_path, "training.max_updates=6", "training.evaluation_interval=3",
            "training.checkpoint_interval=100", "evaluation.metrics=[test_failing_metric]"))
    assert read_checkpoint(str(tmp_path / "current.ckpt"))["update"] == 3
    assert "weights of update 3 are saved" in capsys.readouterr().out


# --------------------------------------------------------------------------- full disk
def test_a_full_disk_names_the_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def save_until_the_disk_fills(state, handle):
        calls.append(handle.name)
        if len(calls) == 1:
            return real_save(state, handle)
        handle.write(b"PK\x03\x04 half a zip")
        # What torch's zip writer raises when a write fails for lack of space.
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage",
                        lambda path: types.SimpleNamespace(free=40960))
    with pytest.raises(OSError, match=r"Could not write checkpoint '.*model_4\.ckpt': the disk "
                                      r"is full \(0 MiB free"):
        run_trainer(make_config(tmp_path, "training.max_updates=6",
                                "training.checkpoint_interval=2"))
    assert read_checkpoint(str(tmp_path / "current.ckpt"))["update"] == 2
    assert sorted(os.listdir(tmp_path / "models")) == ["model_2.ckpt"]  # no temporary left


@pytest.mark.parametrize("error,cause", [
    (RuntimeError("the zip writer broke"), "the zip writer broke"),
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
])
def test_a_failed_write_names_the_file_and_the_cause(tmp_path, monkeypatch, error, cause):
    def failing_save(state, handle):
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage",
                        lambda path: types.SimpleNamespace(free=10 * 2**30))
    (tmp_path / "x.ckpt").write_bytes(b"the previous checkpoint")
    with pytest.raises(OSError, match=f"Could not write checkpoint '.*x.ckpt': {cause}"):
        checkpoints.save_atomic({"x": 1}, str(tmp_path / "x.ckpt"))
    assert (tmp_path / "x.ckpt").read_bytes() == b"the previous checkpoint"
    assert os.listdir(tmp_path) == ["x.ckpt"]


# ------------------------------------------------------------------------ kill mid-save
KILL_MID_SAVE = """
import os, signal, sys
import torch
sys.path[:0] = [{tests!r}]
from toy_training import make_config, run_trainer

real_save, calls = torch.save, []

def killed_mid_write(state, handle):
    calls.append(handle.name)
    if len(calls) == {kill_at_save}:
        handle.write(b"PK\\x03\\x04 the first bytes")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(state, handle)

torch.save = killed_mid_write
run_trainer(make_config({save_dir!r}, *{settings!r}))
"""


def test_kill_mid_save_leaves_the_last_checkpoint_and_resume_is_exact(tmp_path, capsys):
    settings = ["training.max_updates=8", "training.checkpoint_interval=2",
                "training.evaluation_interval=4", "model_config.test_toy_model.dropout=0.3",
                "model_config.test_toy_model.training_tasks=[a,b]", "optimizer.type=AdamW"]
    run_trainer(make_config(tmp_path / "full", *settings))
    killed = tmp_path / "killed"
    # Saves: model_2 (1), current via link, model_4 (2): killed while writing model_4.
    script = KILL_MID_SAVE.format(tests=TESTS, kill_at_save=2, save_dir=str(killed),
                                  settings=settings)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == -9, result.stderr[-2000:]
    leftovers = [name for name in os.listdir(killed / "models") if ".tmp" in name]
    assert leftovers and all(re.fullmatch(r"model_4\.ckpt\.tmp\d+", n) for n in leftovers)
    assert read_checkpoint(str(killed / "current.ckpt"))["update"] == 2

    run_trainer(make_config(killed, *settings, "checkpoint.resume=true"))
    assert not [name for name in os.listdir(killed / "models") if ".tmp" in name]
    assert "temporary file(s) of interrupted checkpoint saves" in capsys.readouterr().out
    expected = {r["update"]: r["loss"] for r in read_jsonl(tmp_path / "full" / "train_log.jsonl")}
    got = {r["update"]: r["loss"] for r in read_jsonl(killed / "train_log.jsonl")}
    for update in range(3, 9):
        assert abs(got[update] - expected[update]) < 1e-6, update


# ---------------------------------------------------------------------------- dead rank
def _rank(rank, port, save_dir):
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    sys.stdout = open(os.path.join(save_dir, f"rank{rank}.txt"), "w", buffering=1)
    sys.stderr = sys.stdout
    run_trainer(make_config(os.path.join(save_dir, "run"), "training.max_updates=50",
                            "model_config.test_toy_model.kill_rank_at_update={'1': 3}"))


def test_a_dead_rank_stops_the_others(tmp_path):
    context = multiprocessing.get_context("spawn")
    port = free_port()
    ranks = [context.Process(target=_rank, args=(rank, port, str(tmp_path))) for rank in (0, 1)]
    started = time.monotonic()
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=240)
    alive = [process.pid for process in ranks if process.is_alive()]
    for process in ranks:
        if process.is_alive():
            process.kill()
    assert not alive, "a rank still waits for the dead one"
    assert ranks[1].exitcode == -9
    assert ranks[0].exitcode != 0  # it noticed, it did not finish training alone
    assert time.monotonic() - started < 240


# --------------------------------------------------------------------- config keys
README_KEY = re.compile(r"(?<![\w/.])((?:training|checkpoint|evaluation)(?:\.[a-z_0-9]+)+)")


def test_every_key_the_readme_documents_is_in_the_defaults_and_settable(tmp_path):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        keys = {key for key in README_KEY.findall(handle.read()) if not key.endswith(".py")}
    assert {"training.exit_on_nan", "checkpoint.allow_unsafe_load", "training.best_metric",
            "evaluation.batch_size", "checkpoint.reset.optimizer"} <= keys
    defaults = OmegaConf.load(MMF_DEFAULTS_YAML)
    absent = object()
    assert [key for key in sorted(keys)
            if OmegaConf.select(defaults, key, default=absent) is absent] == []
    # Set on the command line as a user would, each with its default value, through rc10.
    import argparse

    import mmf.utils.configuration

    import mmf_fashionvil.registry  # noqa: F401  (the model and dataset named below)

    for key in sorted(keys):
        value = OmegaConf.select(defaults, key)
        override = f"{key}={'null' if value is None else value}"
        args = argparse.Namespace(opts=["model=fashionvil", "dataset=fashiongen", override],
                                  config_override=None)
        config = mmf.utils.configuration.Configuration(args).get_config()
        assert OmegaConf.select(config, key) == value, override


@pytest.mark.parametrize("setting,message", [
    ("training.lr_steps=[100]", r"training.lr_steps=\[100\] is not supported"),
    ("checkpoint.resume_zoo=some_zoo_model", "checkpoint.resume_zoo=some_zoo_model is not supported"),
    ("training.log_intervall=5", "training.log_intervall is not a known key"),
    ("checkpoint.reset.weights=true", "checkpoint.reset.weights is not a known key"),
])
def test_unknown_or_unsupported_trainer_keys_are_errors(tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        FashionViLTrainer(make_config(tmp_path, setting))


SCHEDULED = ["optimizer.type=AdamW", "scheduler.type=warmup_cosine",
             "scheduler.params.num_warmup_steps=2", "scheduler.params.num_training_steps=8"]


def test_a_resume_applies_a_changed_lr(tmp_path, capsys):
    run_trainer(make_config(tmp_path, *SCHEDULED, "training.max_updates=4",
                            "optimizer.params.lr=0.05"))
    run_trainer(make_config(tmp_path, *SCHEDULED, "training.max_updates=6",
                            "optimizer.params.lr=0.01", "checkpoint.resume=true"))
    records = {r["update"]: r["lr"] for r in read_jsonl(tmp_path / "train_log.jsonl")}
    cosine = [0.5 * (1 + math.cos(math.pi * (u - 2) / 6)) for u in range(8)]
    assert records[4] == pytest.approx(0.05 * cosine[3])  # update 4 ran at index 3
    assert records[5] == pytest.approx(0.01 * cosine[4])
    assert records[6] == pytest.approx(0.01 * cosine[5])
    assert "Optimizer settings changed since the checkpoint (lr)" in capsys.readouterr().out


@pytest.mark.parametrize("reset,fresh_optimizer,fresh_counts", [
    ("optimizer", True, False), ("counts", False, True), ("all", True, True),
])
def test_checkpoint_reset(tmp_path, reset, fresh_optimizer, fresh_counts):
    run_trainer(make_config(tmp_path / "first", "optimizer.type=AdamW", "training.max_updates=3"))
    saved = read_checkpoint(str(tmp_path / "first" / "current.ckpt"))
    trainer = FashionViLTrainer(make_config(
        tmp_path / "second", "optimizer.type=AdamW", "training.max_updates=6",
        f"checkpoint.resume_file={tmp_path / 'first' / 'current.ckpt'}",
        f"checkpoint.reset.{reset}=true"))
    trainer.load()
    assert (len(trainer.optimizer.state) == 0) == fresh_optimizer
    assert trainer.num_updates == (0 if fresh_counts else 3)
    weights = trainer.unwrapped_model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in saved["model"].items())  # always loaded
