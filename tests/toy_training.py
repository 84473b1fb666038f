"""Toy components for the trainer tests, registered under test_* names: a small MLP with
dropout and two task heads (and switches to fail, diverge or kill its process), a regression
dataset with seeded per-item augmentation, an MSE loss, a loss that gathers across ranks, a
per-batch metric, a failing metric and a dataset-level metric; plus the config and run
helpers the trainer tests share."""
import copy
import math
import os
import signal

import torch
from mmf.common.registry import registry
from mmf.common.sample import Sample
from mmf.datasets.base_dataset import BaseDataset
from mmf.datasets.base_dataset_builder import BaseDatasetBuilder
from mmf.models.base_model import BaseModel
from mmf.modules.metrics import BaseMetric
from omegaconf import OmegaConf
from torch import nn

from mmf_fashionvil import distributed
from mmf_fashionvil.training.trainer import FashionViLTrainer

FEATURES = 4


class SimulatedKill(RuntimeError):
    """Raised by the toy model to simulate a run killed mid-training."""


class ToyDataset(BaseDataset):
    def __init__(self, config, dataset_type):
        super().__init__("test_toy", config, dataset_type)
        size = config.sizes[dataset_type]
        generator = torch.Generator().manual_seed(100 + len(dataset_type))
        self.inputs = torch.randn(size, FEATURES, generator=generator)
        weights = torch.arange(1.0, FEATURES + 1) / FEATURES
        self.labels = self.inputs @ weights + 0.1 * torch.randn(size, generator=generator)
        self.noise = config.augment if dataset_type == "train" else 0.0
        self.seed = registry.get("seed")
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        x = self.inputs[index]
        if self.noise:
            # Per-item augmentation from (seed, epoch, index), as the real datasets do.
            generator = torch.Generator().manual_seed(
                self.seed * 1_000_003 + self.epoch * 1009 + index
            )
            x = x + self.noise * torch.randn(FEATURES, generator=generator)
        sample = Sample()
        sample.x = x
        sample.targets = self.labels[index]
        sample.sample_index = torch.tensor(index)
        return sample


@registry.register_builder("test_toy")
class ToyBuilder(BaseDatasetBuilder):
    def __init__(self):
        super().__init__("test_toy")

    def build(self, config, dataset_type="train", *args, **kwargs):
        pass

    def load(self, config, dataset_type="train", *args, **kwargs):
        return ToyDataset(config, dataset_type) if dataset_type in config.sizes else None

    def update_registry_for_model(self, config):
        pass


@registry.register_model("test_toy_model")
class ToyModel(BaseModel):
    def build(self):
        hidden = self.config.get("hidden", 8)
        self.body = nn.Sequential(
            nn.Linear(FEATURES, hidden), nn.Tanh(), nn.Dropout(self.config.get("dropout", 0.0))
        )
        self.heads = nn.ModuleDict(
            {"a": nn.Linear(hidden, 1), "b": nn.Linear(hidden, self.config.get("out_b", 1))}
        )
        self.initial_state = copy.deepcopy(self.state_dict())
        self.seen = []  # (task, sample indices) of every training forward
        self.train_forwards = 0

    def forward(self, sample_list):
        task = sample_list.task if "task" in sample_list else "a"
        update = registry.get("num_updates", no_warning=True) or 0  # updates done before this
        if self.training:
            self.train_forwards += 1
            if self.train_forwards == self.config.get("fail_at_forward"):
                raise SimulatedKill(f"killed at training forward {self.train_forwards}")
            if update + 1 == self.config.get("kill_rank_at_update", {}).get(
                    str(distributed.get_rank())):
                os.kill(os.getpid(), signal.SIGKILL)  # a dead rank, as the OOM killer leaves it
            self.seen.append((task, sample_list.sample_index.tolist()))
        output = {"scores": self.heads[task](self.body(sample_list.x))[:, 0]}
        if self.training and update + 1 >= self.config.get("nan_from_update", math.inf):
            output["scores"] = output["scores"] * math.nan  # a diverged run
        if self.config.get("diagnostics"):
            # A scalar with a hand-computable mean over any set of batches.
            output["diagnostics"] = {"mean_sample_index": sample_list.sample_index.float().mean()}
        return output


@registry.register_loss("test_mse")
class ToyMSE(nn.Module):
    def forward(self, sample_list, model_output):
        return ((model_output["scores"] - sample_list.targets) ** 2).mean()


@registry.register_loss("test_centering")
class ToyCentering(nn.Module):
    """Mean over local rows of (score - mean of the scores of all ranks)^2:
    averaged over ranks it equals the single-process loss on the whole batch."""

    def forward(self, sample_list, model_output):
        scores = model_output["scores"]
        everyone = distributed.all_gather_with_grad(scores)
        return ((scores - everyone.mean()) ** 2).mean()


@registry.register_metric("test_batch_mae")
class ToyBatchMAE(BaseMetric):
    def __init__(self):
        super().__init__("test_batch_mae")

    def calculate(self, sample_list, model_output):
        return (model_output["scores"] - sample_list.targets).abs().mean()


@registry.register_metric("test_failing_metric")
class ToyFailingMetric(BaseMetric):
    """Fails like an unreadable val image would."""

    def __init__(self):
        super().__init__("test_failing_metric")

    def calculate(self, sample_list, model_output):
        raise OSError("val image 'broken.png' cannot be read")


@registry.register_metric("test_dataset_stats")
class ToyDatasetStats(BaseMetric):
    def __init__(self):
        super().__init__("test_dataset_stats")

    def collect(self, sample_list, model_output):
        error = (model_output["scores"] - sample_list.targets) ** 2
        return {"sample_index": sample_list.sample_index, "squared_error": error}

    def compute(self, collected):
        # Draws from the global RNG, as an unseeded sampling metric would: the
        # trainer must keep evaluation from changing training randomness.
        torch.rand(1)
        index = collected["sample_index"]
        return {
            "mse": collected["squared_error"].mean().item(),
            "count": len(index),
            "index_sum": int(index.sum()),
            "ascending": float(bool(torch.all(index[1:] > index[:-1]))),
        }


def make_config(save_dir, *overrides):
    base = {
        "run_type": "train",
        "model": "test_toy_model",
        "datasets": "test_toy",
        "model_config": {
            "test_toy_model": {"hidden": 8, "dropout": 0.0, "losses": [{"type": "test_mse"}]}
        },
        "dataset_config": {
            "test_toy": {"sizes": {"train": 24, "val": 7, "test": 7}, "augment": 0.1}
        },
        "training": {
            "trainer": "fashionvil_trainer", "seed": 7, "batch_size": 4, "max_updates": 6,
            "update_frequency": 1, "log_interval": 1, "checkpoint_interval": 100,
            "evaluation_interval": 100, "num_workers": 0, "progress_bar": "false",
            "early_stop": {"enabled": False, "criteria": None, "minimize": True, "patience": 0},
        },
        "optimizer": {"type": "SGD", "params": {"lr": 0.05}},
        "scheduler": {},
        "evaluation": {"metrics": ["test_batch_mae", "test_dataset_stats"], "predict": False},
        "checkpoint": {"resume": False, "resume_file": None, "resume_pretrained": False,
                       "max_to_keep": -1},
        "env": {"save_dir": str(save_dir)},
    }
    return OmegaConf.merge(OmegaConf.create(base), OmegaConf.from_dotlist(list(overrides)))


def run_trainer(config):
    trainer = FashionViLTrainer(config)
    trainer.load()
    trainer.train()
    return trainer



def parameters_of(trainer):
    return {k: v.detach().clone() for k, v in trainer.unwrapped_model.state_dict().items()}


def assert_same_parameters(first, second, atol):
    assert first.keys() == second.keys()
    for key in first:
        assert torch.allclose(first[key], second[key], atol=atol, rtol=0), key
