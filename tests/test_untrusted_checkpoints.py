"""Checkpoint files from elsewhere: a pickle payload never runs unless
checkpoint.allow_unsafe_load is true (rc10's own loader, used by training.trainer=
base_trainer, included), and a file that is no checkpoint at all is called that."""
import collections
import importlib.util
import io
import os
import pickle
import random
import sys
import types

import pytest
import torch
from omegaconf import OmegaConf

import mmf.utils.checkpoint
from helpers import MMF_RUN, WIDTH, build_model, run_command, short_run_args, tiny_config
from mmf.common.registry import registry
from mmf_fashionvil import compat
from mmf_fashionvil.training.checkpoints import (
    RequiredWeights,
    load_model_weights,
    read_checkpoint,
)
from mmf_fashionvil.training.trainer import FashionViLTrainer
from toy_training import FEATURES, make_config

PRETRAIN = "projects/fashionvil/configs/pretraining/itc_tiny.yaml"
REFUSAL = "holds objects that torch.load(weights_only=True) refuses"
OPT_IN = "checkpoint.allow_unsafe_load=true"


class MarkerPayload:
    """Unpickling this runs os.mkdir(marker): a harmless stand-in for a payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def malicious_checkpoint(folder):
    """(a checkpoint file whose unpickling runs MarkerPayload, the marker's path)."""
    path, marker = os.path.join(folder, "malicious.ckpt"), os.path.join(folder, "payload_ran")
    torch.save({"model": {}, "payload": MarkerPayload(marker)}, path)
    return path, marker


def rc10_checkpoint(allow_unsafe):
    """As much of an rc10 Checkpoint as its _torch_load uses: device and config."""
    config = OmegaConf.create({"checkpoint": {"allow_unsafe_load": allow_unsafe}})
    return types.SimpleNamespace(device="cpu", config=config)


# ----------------------------------------------------- rc10's loader (base_trainer)
def base_trainer_run(catalog, save_dir, *extra):
    return run_command(
        [MMF_RUN, f"config={PRETRAIN}", *short_run_args("fashiongen", updates=1),
         "training.trainer=base_trainer", "evaluation.metrics=[]",
         f"env.data_dir={catalog}", f"env.save_dir={save_dir}", *extra], timeout=300)


@pytest.fixture(scope="module")
def rc10_saves(tiny_catalog, tmp_path_factory):
    """The folder of a one-update base_trainer run: rc10's Checkpoint.save wrote its
    current.ckpt, Checkpoint.finalize its fashionvil_final.pth (a bare state dict)."""
    save_dir = str(tmp_path_factory.mktemp("base_trainer_run"))
    code, output = base_trainer_run(tiny_catalog, save_dir)
    assert code == 0, output[-4000:]
    return save_dir


def test_base_trainer_refuses_a_malicious_resume_file(tiny_catalog, tmp_path):
    path, marker = malicious_checkpoint(str(tmp_path))
    code, output = base_trainer_run(tiny_catalog, tmp_path / "save", "run_type=val",
                                    f"checkpoint.resume_file={path}")
    assert code != 0
    assert not os.path.exists(marker)
    assert REFUSAL in output and OPT_IN in output and path in output


def test_base_trainer_runs_the_payload_only_when_told_to(tiny_catalog, tmp_path):
    path, marker = malicious_checkpoint(str(tmp_path))
    _, output = base_trainer_run(tiny_catalog, tmp_path / "save", "run_type=val",
                                 f"checkpoint.resume_file={path}",
                                 "checkpoint.allow_unsafe_load=true")
    assert os.path.isdir(marker), output[-4000:]  # the user's explicit choice
    assert REFUSAL not in output


def test_base_trainer_resumes_from_its_own_checkpoint_without_opt_in(
        rc10_saves, tiny_catalog, tmp_path):
    code, output = base_trainer_run(tiny_catalog, tmp_path, "run_type=val",
                                    f"checkpoint.resume_file={rc10_saves}/current.ckpt")
    assert code == 0, output[-4000:]
    assert "Checkpoint loaded" in output


def test_rc10_loader_reads_its_own_files_weights_only(rc10_saves):
    load = mmf.utils.checkpoint.Checkpoint._torch_load
    saved = load(rc10_checkpoint(False), os.path.join(rc10_saves, "current.ckpt"))
    assert saved["num_updates"] >= 1 and saved["config"]["training"]["trainer"] == "base_trainer"
    final = load(rc10_checkpoint(False), os.path.join(rc10_saves, "fashionvil_final.pth"))
    assert all(torch.is_tensor(value) for value in final.values())
    assert saved["model"].keys() == final.keys()


def pythia_v03_config(monkeypatch):
    """A config as MMF's predecessor Pythia v0.3 pickled it in its checkpoints: a
    pythia.utils.configuration.ConfigNode (an OrderedDict carrying a frozen flag)."""
    pythia = types.ModuleType("pythia.utils.configuration")

    class PythiaConfigNode(collections.OrderedDict):
        pass

    PythiaConfigNode.__module__ = pythia.__name__
    PythiaConfigNode.__qualname__ = PythiaConfigNode.__name__ = "ConfigNode"
    pythia.ConfigNode = PythiaConfigNode
    monkeypatch.setitem(sys.modules, pythia.__name__, pythia)
    node = PythiaConfigNode(model="pythia", training_parameters=PythiaConfigNode(lr=0.01))
    node.__dict__["__is_frozen"] = True
    return node


def test_rc10_loader_reads_pythia_checkpoints_weights_only(tmp_path, monkeypatch):
    path = str(tmp_path / "pythia.ckpt")
    torch.save({"model": {"w": torch.ones(2)}, "config": pythia_v03_config(monkeypatch)}, path)
    monkeypatch.delitem(sys.modules, "pythia.utils.configuration")
    loaded = mmf.utils.checkpoint.Checkpoint._torch_load(rc10_checkpoint(False), path)
    config = loaded["config"]  # an OrderedDict, as rc10's own ConfigNode is one
    assert type(config) is type(config["training_parameters"]) is collections.OrderedDict
    assert config == {"model": "pythia", "training_parameters": {"lr": 0.01}}


def test_rc10_loader_refuses_a_payload_unless_the_config_allows_it(tmp_path):
    path, marker = malicious_checkpoint(str(tmp_path))
    load = mmf.utils.checkpoint.Checkpoint._torch_load
    with pytest.raises(ValueError, match="refuses") as refused:
        load(rc10_checkpoint(False), path)
    assert not os.path.exists(marker)
    assert OPT_IN in str(refused.value) and path in str(refused.value)
    assert load(rc10_checkpoint(True), path)["model"] == {}
    assert os.path.isdir(marker)


@pytest.fixture
def global_config():
    """Registers a config (as mmf_run does) for the test; restores the previous one."""
    previous = registry.get("config")

    def register(allow_unsafe):
        registry.register("config", rc10_checkpoint(allow_unsafe).config)

    yield register
    registry.register("config", previous)


def test_rc10_pretrained_model_loader_reads_the_option_from_the_global_config(
        tmp_path, global_config):
    path, marker = malicious_checkpoint(str(tmp_path))
    global_config(False)
    with pytest.raises(ValueError, match="refuses"):
        mmf.utils.checkpoint.load_pretrained_model(str(tmp_path))
    assert not os.path.exists(marker)
    global_config(True)
    with pytest.raises(AssertionError, match="configuration"):  # it holds no config
        mmf.utils.checkpoint.load_pretrained_model(str(tmp_path))
    assert os.path.isdir(marker)


@pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
def test_rc10_on_torch_before_2_6_needs_the_patch_too(tmp_path, monkeypatch):
    """torch<2.6 loads everything by default: there stock rc10 runs the payload."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    spec = importlib.util.spec_from_file_location("stock_rc10_checkpoint",
                                                  mmf.utils.checkpoint.__file__)
    stock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stock)  # executed without compat's patches
    path, marker = malicious_checkpoint(str(tmp_path))
    stock.Checkpoint._torch_load(rc10_checkpoint(False), path)
    assert os.path.isdir(marker)
    os.rmdir(marker)
    assert compat.trusted_checkpoint_load(stock) is True
    with pytest.raises(ValueError, match="refuses"):
        stock.Checkpoint._torch_load(rc10_checkpoint(False), path)
    assert not os.path.exists(marker)


# ------------------------------------------------------------ read_checkpoint
def written(tmp_path, data, name="current.ckpt"):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def saved_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


NOT_A_CHECKPOINT = "is not a checkpoint (corrupt or truncated?)"


@pytest.mark.parametrize("allow_unsafe", [False, True])
@pytest.mark.parametrize("data", [
    random.Random(0).randbytes(4096),
    b"model: fashionvil\n",
    b"",
], ids=["random bytes", "text", "empty"])
def test_a_file_that_is_no_checkpoint_is_called_so(tmp_path, data, allow_unsafe):
    path = written(tmp_path, data)
    with pytest.raises(ValueError) as error:
        read_checkpoint(path, allow_unsafe)
    message = str(error.value)
    assert NOT_A_CHECKPOINT in message and path in message
    assert "allow_unsafe_load" not in message and "refuses" not in message


def test_a_truncated_checkpoint_is_called_corrupt(tmp_path):
    data = saved_bytes({"model": {"w": torch.randn(64, 64)}})
    path = written(tmp_path, data[:len(data) // 2])
    with pytest.raises(ValueError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert f"Checkpoint '{path}' cannot be read (corrupt or truncated?)" in message
    assert "allow_unsafe_load" not in message


def test_a_pickle_with_a_disallowed_global_is_refused_with_the_opt_in_named(tmp_path):
    path, marker = malicious_checkpoint(str(tmp_path))
    with pytest.raises(ValueError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert f"Checkpoint '{path}' {REFUSAL}" in message and OPT_IN in message
    assert "posix.mkdir" in message  # torch names the refused global
    assert not os.path.exists(marker)
    # A plain pickle.dump of one is refused the same way.
    with open(path, "wb") as f:
        pickle.dump(MarkerPayload(marker), f, protocol=2)
    with pytest.raises(ValueError, match=OPT_IN.replace(".", r"\.")):
        read_checkpoint(path)
    assert not os.path.exists(marker)


# ------------------------------------------- resume_pretrained: no silent fresh start
def authors_named_state(model):
    """The model's weights under other names (as the authors' unconverted release has them)."""
    return {f"model.bert.{name}": value.clone() for name, value in model.state_dict().items()}


def test_resume_pretrained_refuses_a_checkpoint_with_other_names():
    model = build_model(tiny_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as error:
        load_model_weights(model, authors_named_state(model), "fashionvil_final.pth",
                           require_all=False, required=RequiredWeights())
    message = str(error.value)
    assert "fashionvil_final.pth" in message and "0.0%" in message
    assert "image_encoder.conv1.weight (8, 3, 7, 7)" in message  # the first unmatched name
    assert "python -m mmf_fashionvil.convert" in message
    assert "checkpoint.pretrained_min_share" in message
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was copied


def test_the_core_share_counts_parameter_elements_of_the_backbone_and_transformer():
    model = build_model(tiny_config())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del state["encoder.layer.1.intermediate.dense.weight"]  # WIDTH x 64 elements
    state["visual_projection.weight"] = torch.zeros(3, 3)  # a shape mismatch loads nothing
    core = [p for name, p in model.named_parameters() if name.split(".")[0] in
            ("image_encoder", "visual_projection", "embeddings", "encoder")]
    total = sum(p.numel() for p in core)
    share = 1 - (WIDTH * 64 + WIDTH * model.image_encoder.out_channels) / total
    with pytest.raises(ValueError, match=f"fits {100 * share:.1f}% of the parameters") as error:
        load_model_weights(model, state, "partial.ckpt", False, RequiredWeights())
    assert "visual_projection.weight (32, 64) (checkpoint: (3, 3))" in str(error.value)
    load_model_weights(model, state, "partial.ckpt", False, RequiredWeights(min_share=share))
    # Heads and projections are outside the core: a checkpoint without them loads.
    core_only = {k: v for k, v in model.state_dict().items()
                 if not k.startswith(("image_projection", "text_projection", "embedding_norm"))}
    load_model_weights(model, core_only, "core.ckpt", False, RequiredWeights())
    with pytest.raises(ValueError, match="pretrained_core=.*names no parameter"):
        load_model_weights(model, core_only, "core.ckpt", False,
                           RequiredWeights(prefixes=["nothing"]))
    with pytest.raises(ValueError, match="pretrained_min_share must be in"):
        RequiredWeights(min_share=1.5)


def test_the_trainer_refuses_a_foreign_pretrained_checkpoint(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"model": {"backbone.weight": torch.zeros(8, FEATURES)}}, path)
    pretrained = [f"checkpoint.resume_file={path}", "checkpoint.resume_pretrained=true"]
    with pytest.raises(ValueError, match="fits none of the model's parameters"):
        FashionViLTrainer(make_config(tmp_path / "run", *pretrained)).load()
    # A model core named in the config: here the toy's body must load in full.
    torch.save({"model": {"body.0.weight": torch.zeros(8, FEATURES)}}, path)
    with pytest.raises(ValueError, match=r"of the parameters of \['body'\]"):
        FashionViLTrainer(make_config(tmp_path / "run2", *pretrained,
                                      "checkpoint.pretrained_core=[body]")).load()
    trainer = FashionViLTrainer(make_config(tmp_path / "run3", *pretrained,
                                            "checkpoint.pretrained_core=[body]",
                                            "checkpoint.pretrained_min_share=0.5"))
    trainer.load()
    assert torch.equal(trainer.unwrapped_model.body[0].weight, torch.zeros(8, FEATURES))
