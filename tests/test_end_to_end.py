"""The stock `mmf_run` / `torchrun mmf_run` entry points on the synthetic catalog."""
import json
import os
import shutil

import pytest
import torch

from helpers import MMF_RUN, TORCHRUN, final_metrics, read_jsonl, run_command, short_run_args

PRETRAIN = "projects/fashionvil/configs/pretraining/itc_tiny.yaml"
SHORT_RUN = short_run_args("fashiongen", updates=6, checkpoint_interval=3, warmup_steps=2)


@pytest.fixture(scope="module")
def trained_run(tiny_catalog, tmp_path_factory):
    save_dir = str(tmp_path_factory.mktemp("itc_run"))
    code, output = run_command(
        [MMF_RUN, f"config={PRETRAIN}", *SHORT_RUN, f"env.data_dir={tiny_catalog}",
         f"env.save_dir={save_dir}"]
    )
    assert code == 0, output[-4000:]
    return save_dir, output


def test_mmf_run_trains_evaluates_and_saves(trained_run):
    save_dir, _ = trained_run
    assert os.path.isfile(os.path.join(save_dir, "current.ckpt"))
    updates = [r["update"] for r in read_jsonl(os.path.join(save_dir, "train_log.jsonl"))]
    assert updates == [2, 4, 6]  # log_interval 2, exactly max_updates updates
    metrics = final_metrics(save_dir, "val")
    for direction in ("itr", "tir"):
        r1, r5, r10 = (metrics[f"val/fashiongen/fashionvil_retrieval/general/{direction}_r@{k}"]
                       for k in (1, 5, 10))
        assert 0 <= r1 <= r5 <= r10 <= 100
    checkpoint = torch.load(os.path.join(save_dir, "current.ckpt"), weights_only=False)
    assert checkpoint["update"] == 6


def test_run_type_test_reproduces_validation_of_saved_model(trained_run, tiny_catalog, tmp_path):
    """FashionGen's test split is its val split, so evaluating the saved model
    must give exactly the numbers the training run reported at its end."""
    save_dir, _ = trained_run
    code, output = run_command(
        [MMF_RUN, f"config={PRETRAIN}", *SHORT_RUN, "run_type=test",
         f"env.data_dir={tiny_catalog}", f"env.save_dir={tmp_path}",
         f"checkpoint.resume_file={save_dir}/current.ckpt"]
    )
    assert code == 0, output[-4000:]
    val = final_metrics(save_dir, "val")
    test = final_metrics(str(tmp_path), "test")
    assert {k.split("/", 1)[1]: v for k, v in test.items()} == pytest.approx(
        {k.split("/", 1)[1]: v for k, v in val.items()}, abs=1e-6)


def test_torchrun_two_cpu_ranks(tiny_catalog, tmp_path):
    code, output = run_command(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", MMF_RUN, f"config={PRETRAIN}",
         *SHORT_RUN, f"env.data_dir={tiny_catalog}", f"env.save_dir={tmp_path}"]
    )
    assert code == 0, output[-4000:]
    # One log and one checkpoint set, written by rank 0 only.
    assert sorted(os.listdir(tmp_path)) == sorted(
        n for n in os.listdir(tmp_path) if "rank" not in n)
    assert [r["update"] for r in read_jsonl(tmp_path / "train_log.jsonl")] == [2, 4, 6]
    assert output.count("Model parameters identical across 2 ranks") == 1
    assert os.path.isfile(tmp_path / "current.ckpt")


def test_torchrun_one_process_trains_as_plain_mmf_run(trained_run, tiny_catalog, tmp_path):
    code, output = run_command(
        [TORCHRUN, "--standalone", "--nproc_per_node=1", MMF_RUN, f"config={PRETRAIN}",
         *SHORT_RUN, f"env.data_dir={tiny_catalog}", f"env.save_dir={tmp_path}"]
    )
    assert code == 0, output[-4000:]
    plain_dir, _ = trained_run
    records = read_jsonl(tmp_path / "train_log.jsonl")
    plain = read_jsonl(f"{plain_dir}/train_log.jsonl")
    assert [r["update"] for r in records] == [r["update"] for r in plain] == [2, 4, 6]
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in plain], abs=1e-5)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model=no_such_model", "no_such_model"),
        ("dataset=no_such_dataset", "no_such_dataset"),
    ],
)
def test_unknown_names_give_clear_errors(tiny_catalog, tmp_path, override, expected):
    args = [a for a in SHORT_RUN if not a.startswith(override.split("=")[0] + "=")]
    code, output = run_command(
        [MMF_RUN, f"config={PRETRAIN}", *args, override, f"env.data_dir={tiny_catalog}",
         f"env.save_dir={tmp_path}"]
    )
    assert code != 0
    assert expected in output.splitlines()[-1] or expected in output[-600:]
    assert "registered" in output[-1500:]


def test_missing_data_dir_is_named(tmp_path):
    code, output = run_command(
        [MMF_RUN, f"config={PRETRAIN}", *SHORT_RUN, f"env.save_dir={tmp_path}",
         f"env.data_dir={tmp_path}/absent"]
    )
    assert code != 0
    assert f"{tmp_path}/absent" in output[-1500:]


def test_corrupt_image_is_named(tiny_catalog, tmp_path):
    catalog = tmp_path / "catalog"
    shutil.copytree(tiny_catalog, catalog)
    info = json.loads((catalog / "datasets/FashionGen/train_info.json").read_text())
    # Training loads one random view per product: break every view of the first product.
    views = [catalog / "datasets/FashionGen/train" / path for path in info[0]["images"]]
    for view in views:
        view.write_bytes(b"not an image")
    code, output = run_command(
        [MMF_RUN, f"config={PRETRAIN}", *SHORT_RUN, "training.max_updates=20",
         f"env.data_dir={catalog}", f"env.save_dir={tmp_path}/save"]
    )
    assert code != 0
    assert any(str(view) in output[-3000:] for view in views)


def test_resume_after_a_kill_repeats_the_uninterrupted_losses(tiny_catalog, tmp_path):
    """Run A trains 6 updates (checkpoints at 3 and 6). Run B starts from A's update-3
    checkpoint, as a run killed after update 3 would, and must log the same losses for
    updates 4..6 (real model: dropout, BatchNorm, random crops/flips, 2 loader workers)."""
    common = [MMF_RUN, f"config={PRETRAIN}", *SHORT_RUN, f"env.data_dir={tiny_catalog}",
              "training.log_interval=1", "training.num_workers=2", "checkpoint.max_to_keep=-1"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    code, output = run_command([*common, f"env.save_dir={full}"])
    assert code == 0, output[-4000:]
    resumed.mkdir()
    shutil.copy(full / "models" / "model_3.ckpt", resumed / "current.ckpt")
    code, output = run_command([*common, f"env.save_dir={resumed}", "checkpoint.resume=True"])
    assert code == 0, output[-4000:]
    expected = {r["update"]: r["loss"] for r in read_jsonl(full / "train_log.jsonl")}
    got = {r["update"]: r["loss"] for r in read_jsonl(resumed / "train_log.jsonl")}
    assert sorted(got) == [4, 5, 6]
    for update in (4, 5, 6):
        assert got[update] == pytest.approx(expected[update], rel=1e-5, abs=1e-6)
