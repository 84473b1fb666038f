"""mmf_fashionvil.compat: each patch fails without it and works with it.

"Without" is shown by running stock rc10 (MMF_FASHIONVIL_NO_COMPAT=1), by calling the
rc10 function a patch replaced (kept as ``__wrapped__``), or by executing a fresh,
unpatched copy of the rc10 module (``pristine``).
"""
import argparse
import collections.abc
import importlib
import importlib.util
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from omegaconf import OmegaConf

import mmf  # noqa: F401  (imported through the compat hook)
import mmf.datasets.base_dataset_builder
import mmf.modules.metrics
import mmf.utils.build
import mmf.utils.checkpoint
import mmf.utils.configuration
import mmf.utils.distributed
import mmf.utils.env
import mmf.utils.logger
import mmf_cli.run
from mmf.common.registry import registry
from mmf.datasets.base_dataset_builder import BaseDatasetBuilder
from mmf.models.base_model import BaseModel
from mmf_fashionvil import compat

# The entry point installed next to this interpreter (not another one on PATH).
MMF_RUN = os.path.join(os.path.dirname(sys.executable), "mmf_run")
if not os.path.isfile(MMF_RUN):
    MMF_RUN = shutil.which("mmf_run")


def pristine(module_name):
    """A fresh copy of an installed module, executed without compat's patches."""
    real = importlib.import_module(module_name)
    package, _, leaf = module_name.rpartition(".")
    spec = importlib.util.spec_from_file_location(f"{package}._pristine_{leaf}", real.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_python(code, env_extra=None, timeout=240):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture
def clean_registry():
    """Restores MMF's global registry (names and state) after the test."""
    saved = {key: dict(table) for key, table in registry.mapping.items()}
    yield registry
    for key, table in registry.mapping.items():
        table.clear()
        table.update(saved.get(key, {}))


class ToyBuilder(BaseDatasetBuilder):
    """A builder that, like most user builders, defines no update_registry_for_model."""

    def __init__(self):
        super().__init__("compat_toy_data")

    def build(self, config, dataset_type="train", *args, **kwargs):
        pass

    def load(self, config, dataset_type="train", *args, **kwargs):
        return None


@pytest.fixture
def toy_names(clean_registry, tmp_path):
    """Registers a model and a dataset with default configs, as a plugin would."""
    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text("model_config: {compat_toy_model: {width: 7}}\n")
    dataset_yaml = tmp_path / "dataset.yaml"
    dataset_yaml.write_text("dataset_config: {compat_toy_data: {depth: 5}}\n")
    model = type("ToyModel", (BaseModel,),
                 {"config_path": classmethod(lambda cls: str(model_yaml))})
    builder = type("ToyDataBuilder", (ToyBuilder,),
                   {"config_path": classmethod(lambda cls: str(dataset_yaml))})
    clean_registry.register_model("compat_toy_model")(model)
    clean_registry.register_builder("compat_toy_data")(builder)
    return clean_registry


def configuration(*opts):
    args = argparse.Namespace(opts=list(opts), config_override=None)
    return mmf.utils.configuration.Configuration(args)


# ------------------------------------------------------------------ import paths
def test_stock_rc10_cannot_start_and_aliases_make_it_import():
    names = sorted(compat.ALIASES)
    probe = textwrap.dedent(f"""
        import importlib, json
        failed = {{}}
        for name in {names!r} + ["mmf"]:
            try:
                importlib.import_module(name)
            except ImportError as error:
                failed[name] = type(error).__name__
        print(json.dumps(failed))
    """)
    stock = run_python(probe, {"MMF_FASHIONVIL_NO_COMPAT": "1"})
    assert stock.returncode == 0, stock.stderr
    assert set(json.loads(stock.stdout.splitlines()[-1])) == set(names) | {"mmf"}
    # The stock CLI itself dies on the first missing module.
    cli = subprocess.run([MMF_RUN, "model=x", "dataset=y"], capture_output=True, text=True,
                         env=dict(os.environ, MMF_FASHIONVIL_NO_COMPAT="1"), timeout=120)
    assert cli.returncode != 0 and "No module named 'demjson'" in cli.stderr

    # With the hook (this process): every alias imports and means what rc10 expects.
    import demjson
    import demjson3
    import torchtext
    import transformers.configuration_auto
    import transformers.modeling_bert
    from transformers.models.bert import modeling_bert

    assert demjson is demjson3 and demjson3.__spec__.name == "demjson3"
    assert transformers.modeling_bert.BertEncoder is modeling_bert.BertEncoder
    assert transformers.modeling_bert.BertLayerNorm is torch.nn.LayerNorm
    assert transformers.configuration_auto.AutoConfig.__name__ == "AutoConfig"
    with pytest.raises(ImportError, match="torchtext is discontinued"):
        torchtext.vocab.GloVe


def test_alias_is_not_used_when_the_real_module_exists(monkeypatch):
    monkeypatch.setitem(compat.ALIASES, "json", lambda: pytest.fail("alias built"))
    spec = compat._CompatFinder().find_spec("json", None)
    assert spec.origin == json.__spec__.origin


def test_transformers_adamw_keeps_its_old_defaults():
    assert not hasattr(pristine("transformers.optimization"), "AdamW")
    adam_w = registry.get_optimizer_class("adam_w")
    group = adam_w([torch.nn.Parameter(torch.zeros(2))], lr=0.1).param_groups[0]
    # transformers' AdamW defaults (torch's are eps=1e-8, weight_decay=1e-2).
    assert (group["eps"], group["weight_decay"]) == (1e-6, 0.0)
    with pytest.raises(ValueError, match="correct_bias"):
        adam_w([torch.nn.Parameter(torch.zeros(2))], correct_bias=False)


# ----------------------------------------------------------------- configuration
# Keys rc10 reads without checking that they exist (grep of mmf/ and mmf_cli/).
RC10_READS = """config model datasets run_type learning_rate device_id model_config
dataset_config optimizer training.trainer training.seed training.experiment_name
training.max_updates training.max_epochs training.batch_size training.log_interval
training.checkpoint_interval training.evaluation_interval training.num_workers
training.pin_memory training.clip_gradients training.clip_norm_mode
training.max_grad_l2_norm training.lr_scheduler training.device training.verbose_dump
training.tensorboard training.logger_level training.log_format
training.log_detailed_config training.should_not_log training.stdout_capture
training.evaluate_metrics training.find_unused_parameters training.early_stop.enabled
training.early_stop.criteria training.early_stop.minimize training.early_stop.patience
evaluation.metrics evaluation.predict evaluation.predict_file_format checkpoint.resume
checkpoint.resume_file checkpoint.resume_best checkpoint.resume_pretrained
checkpoint.resume_zoo checkpoint.zoo_config_override checkpoint.pretrained_state_mapping
checkpoint.save_git_details checkpoint.reset.all checkpoint.reset.optimizer
checkpoint.reset.counts distributed.init_method distributed.rank distributed.port
distributed.backend distributed.world_size distributed.no_spawn env.cache_dir
env.dataset_zoo env.model_zoo env.data_dir env.save_dir env.log_dir env.report_dir
env.tensorboard_logdir env.user_dir""".split()
# Keys the fashionvil trainer reads.
TRAINER_READS = """training.update_frequency training.amp.enabled training.amp.dtype
training.progress_bar checkpoint.max_to_keep""".split()


def test_default_config_is_shipped_and_complete(monkeypatch, toy_names):
    assert not os.path.isfile(pristine("mmf.utils.configuration").get_default_config_path())
    path = mmf.utils.configuration.get_default_config_path()
    assert os.path.isfile(path)
    assert "${env:" not in open(path).read()  # omegaconf>=2.1 only knows ${oc.env:...}

    monkeypatch.setenv("MMF_DATA_DIR", "/data/somewhere")
    monkeypatch.delenv("MMF_SAVE_DIR", raising=False)
    monkeypatch.delenv("MMF_USER_DIR", raising=False)
    config = configuration("model=compat_toy_model", "dataset=compat_toy_data").get_config()
    for key in RC10_READS + TRAINER_READS:
        node = config
        for part in key.split("."):
            assert part in node, key
            node = node[part]  # resolves interpolations too
    assert config.env.data_dir == "/data/somewhere"
    assert config.env.save_dir == "./save" and config.env.user_dir is None
    assert config.training.trainer == "fashionvil_trainer"
    assert config.training.stdout_capture is False and config.distributed.backend is None
    assert (config.training.update_frequency, config.training.amp.enabled) == (1, False)
    # The model's and the dataset's own defaults were merged in.
    assert config.model_config.compat_toy_model.width == 7
    assert config.dataset_config.compat_toy_data.depth == 5


def test_absent_command_line_options_read_as_none(toy_names):
    config_class = mmf.utils.configuration.Configuration
    opts = config_class._build_opt_list.__wrapped__(config_class.__new__(config_class),
                                                    ["model=compat_toy_model"])
    with pytest.raises(AttributeError):  # omegaconf>=2.1: no config= given -> raises
        opts.config
    # Patched: no config= needed, and a missing model gets rc10's own message.
    configuration("model=compat_toy_model", "dataset=compat_toy_data")
    with pytest.raises(KeyError, match="Required argument 'model' not passed"):
        configuration("dataset=compat_toy_data")
    with pytest.raises(KeyError, match=re.escape("argument 'dataset|datasets' not passed")):
        configuration("model=compat_toy_model")


def test_command_line_values_read_as_yaml_where_literal_eval_fails(toy_names):
    config_class = mmf.utils.configuration.Configuration
    stock = config_class._decode_value.__wrapped__
    assert stock(None, "false") == "false" and stock(None, "[itc, mlm]") == "[itc, mlm]"
    toy = ("model=compat_toy_model", "dataset=compat_toy_data")
    config = configuration(
        *toy, "checkpoint.resume=false", "training.fast_read=TRUE", "env.cache_dir=null",
        "evaluation.metrics=[itc, mlm]", "model_config.compat_toy_model.width=['itc','mlm']",
        "checkpoint.pretrained_state_mapping={itc: 0.5, mlm: 0.5}", "env.save_dir=/a/b:c",
        "training.max_grad_l2_norm=1e-5", "dataset_config.compat_toy_data.depth=no",
    ).get_config()
    assert config.checkpoint.resume is False and config.training.fast_read is True
    assert config.env.cache_dir is None
    assert list(config.evaluation.metrics) == ["itc", "mlm"]
    assert list(config.model_config.compat_toy_model.width) == ["itc", "mlm"]
    # Everything else as rc10 read it: plain strings stay strings ("no" is not YAML 1.1's
    # False here), Python literals are numbers.
    assert config.env.save_dir == "/a/b:c" and config.training.max_grad_l2_norm == 1e-5
    assert config.dataset_config.compat_toy_data.depth == "no"


def test_a_mapping_given_whole_on_the_command_line_replaces_the_mapping(toy_names):
    config_class = mmf.utils.configuration.Configuration
    stock = OmegaConf.create({"training": {"probabilities": {"itc": 0.5, "mlm": 0.5}}})
    config_class._merge_with_dotlist.__wrapped__(
        config_class.__new__(config_class), stock, ["training.probabilities={'itc': 1.0}"])
    assert dict(stock.training.probabilities) == {"itc": 0.5, "mlm": 0.5}  # silently kept

    toy = ("model=compat_toy_model", "dataset=compat_toy_data")
    config = configuration(
        *toy, "checkpoint.pretrained_state_mapping={image_encoder: visual, text: bert}",
        "model_config.compat_toy_model={width: 3, depth: 2}", "training.batch_size=4",
    ).get_config()
    assert dict(config.checkpoint.pretrained_state_mapping) == {
        "image_encoder": "visual", "text": "bert"}
    assert dict(config.model_config.compat_toy_model) == {"width": 3, "depth": 2}
    assert config.training.batch_size == 4
    with pytest.raises(ValueError, match="checkpoint.pretrained_state_mapping is a mapping"):
        configuration(*toy, "checkpoint.pretrained_state_mapping=[a, b]")
    with pytest.raises(AttributeError, match="no_such_key"):  # rc10's unknown-key error
        configuration(*toy, "training.no_such_key={a: 1}")


def test_unknown_model_or_dataset_name_is_a_clear_error(toy_names):
    config_class = mmf.utils.configuration.Configuration
    with pytest.warns(UserWarning, match="No model named 'nosuch'"):
        assert config_class._build_model_config.__wrapped__(
            None, OmegaConf.create({"model": "nosuch"})) == {}
    with pytest.warns(UserWarning, match="No dataset named 'nosuch'"):
        assert config_class._build_dataset_config.__wrapped__(
            None, OmegaConf.create({"dataset": None, "datasets": "nosuch"})) == {}

    with pytest.raises(ValueError, match=r"model=nosuch.*Registered models:.*compat_toy_model"):
        configuration("model=nosuch", "dataset=compat_toy_data")
    with pytest.raises(ValueError, match=r"registered as nosuch\. .*compat_toy_data"):
        configuration("model=compat_toy_model", "dataset=compat_toy_data,nosuch")


def test_unknown_trainer_name_is_a_clear_error():
    config = OmegaConf.create({"training": {"trainer": "nosuch"}})
    with pytest.raises(TypeError, match="'NoneType' object is not callable"):
        mmf.utils.build.build_trainer.__wrapped__(config)
    with pytest.raises(ValueError, match=r"trainer=nosuch.*Registered trainers:.*base_trainer"):
        mmf_cli.run.build_trainer(config)  # the name mmf_run's main() calls


def test_plugin_resolvers_survive_get_config(monkeypatch, toy_names):
    monkeypatch.setattr(compat, "_PLUGIN_RESOLVERS", {})
    compat.add_resolver("compat_test_double", lambda x: 2 * int(x))
    config = configuration("model=compat_toy_model", "dataset=compat_toy_data")
    config.get_config()  # rc10 clears all resolvers here
    assert OmegaConf.create({"v": "${compat_test_double:21}"}).v == 42
    config._register_resolvers.__wrapped__(config)
    assert not OmegaConf.has_resolver("compat_test_double")
    config._register_resolvers()  # leave rc10's resolvers registered


# ------------------------------------------------------------------------ logger
def test_logger_sees_collections_abc_without_touching_collections():
    written = []
    logger = types.SimpleNamespace(_is_master=True, log_format="simple", write=written.append)
    with pytest.raises(AttributeError, match="Mapping"):
        pristine("mmf.utils.logger").Logger.log_progress(logger, {"loss": 1.5})
    mmf.utils.logger.Logger.log_progress(logger, {"loss": 1.5})
    assert written == ["loss: 1.5"]
    assert not hasattr(collections, "Mapping")


# -------------------------------------------------------------------- checkpoint
def test_config_yaml_is_saved_without_pretty(tmp_path):
    checkpoint = types.SimpleNamespace(
        ckpt_foldername=str(tmp_path), config=OmegaConf.create({"a": 3, "b": "${a}"}))
    with pytest.raises(AttributeError):  # DictConfig.pretty() is gone
        mmf.utils.checkpoint.Checkpoint.save_config.__wrapped__(checkpoint)
    mmf.utils.checkpoint.Checkpoint.save_config(checkpoint)
    assert OmegaConf.load(tmp_path / "config.yaml") == {"a": 3, "b": 3}


def test_checkpoint_loads_weights_only_unless_the_config_allows_more(tmp_path):
    path = str(tmp_path / "current.ckpt")
    saved = {"model": {"w": torch.arange(3.0)}, "config": argparse.Namespace(lr=0.5)}
    torch.save(saved, path)

    def checkpoint(allow_unsafe):
        config = OmegaConf.create({"checkpoint": {"allow_unsafe_load": allow_unsafe}})
        return types.SimpleNamespace(device="cpu", config=config)

    with pytest.raises(pickle.UnpicklingError):  # stock rc10 has no way to opt in
        pristine("mmf.utils.checkpoint").Checkpoint._torch_load(checkpoint(True), path)
    with pytest.raises(ValueError, match=r"checkpoint\.allow_unsafe_load=true"):
        mmf.utils.checkpoint.Checkpoint._torch_load(checkpoint(False), path)
    loaded = mmf.utils.checkpoint.Checkpoint._torch_load(checkpoint(True), path)
    assert loaded["config"].lr == 0.5 and torch.equal(loaded["model"]["w"], torch.arange(3.0))
    with pytest.raises(pickle.UnpicklingError):  # torch.load elsewhere stays weights-only
        torch.load(path)


# ------------------------------------------------------------------- distributed
def test_rank_comes_from_the_process_group_even_without_nccl(monkeypatch):
    import torch.distributed as dist

    barriers = []
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)  # a CPU-only wheel
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: barriers.append(1))
    module = mmf.utils.distributed
    assert (module.get_rank.__wrapped__(), module.get_world_size.__wrapped__()) == (0, 1)
    module.synchronize.__wrapped__()
    assert barriers == []

    assert (module.get_rank(), module.get_world_size(), module.is_master()) == (1, 2, False)
    module.synchronize()
    assert barriers == [1]
    # Modules that did `from mmf.utils.distributed import ...` hold the fixed functions.
    assert mmf.utils.checkpoint.synchronize is module.synchronize
    assert mmf.datasets.base_dataset_builder.synchronize is module.synchronize


@pytest.mark.skipif(torch.cuda.is_available(), reason="the patch defers to rc10 on CUDA")
def test_distributed_init_starts_cpu_ranks_with_gloo(monkeypatch):
    import torch.distributed as dist

    calls = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.update(init=kw))
    monkeypatch.setattr(dist, "all_reduce", lambda t: calls.update(warm_up=t.device.type))
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 1)
    monkeypatch.setattr(mmf.utils.distributed, "suppress_output", lambda is_master: None)

    def config():
        return OmegaConf.create({"distributed": {
            "backend": None, "init_method": "env://", "world_size": 2, "rank": 1}})

    rc10_config = config()
    rc10_config.distributed.backend = "gloo"  # even when told gloo, rc10 warms up on CUDA
    with pytest.raises((RuntimeError, AssertionError)):
        mmf.utils.distributed.distributed_init.__wrapped__(rc10_config)

    calls.clear()
    patched_config = config()
    assert mmf.utils.distributed.distributed_init(patched_config) == 1
    assert calls["init"] == {"backend": "gloo", "init_method": "env://",
                             "world_size": 2, "rank": 1}
    assert calls["warm_up"] == "cpu"
    assert patched_config.distributed.backend == "gloo"


@pytest.mark.parametrize("backend", [None, "gloo", "nccl"])
def test_distributed_init_of_a_single_process_starts_no_group(monkeypatch, backend):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: pytest.fail("group started"))
    config = OmegaConf.create({"distributed": {
        "backend": backend, "init_method": "env://", "world_size": 1, "rank": None}})
    with pytest.raises(ValueError, match="world_size=1"):  # torchrun --nproc_per_node=1
        mmf.utils.distributed.distributed_init.__wrapped__(config)
    assert mmf.utils.distributed.distributed_init(config) == 0
    assert config.distributed.rank == 0


def test_torchrun_rank_gets_the_device_of_its_local_rank(monkeypatch):
    seen = []
    monkeypatch.setenv("LOCAL_RANK", "1")
    # Stand in for rc10's main(): record which device the rank was given.
    monkeypatch.setattr(mmf_cli.run, "main",
                        lambda conf, init_distributed=False, predict=False:
                        seen.append(conf.get_config().device_id))
    config = OmegaConf.create({"device_id": None, "start_rank": 0,
                               "distributed": {"rank": 1}})
    stub_configuration = types.SimpleNamespace(get_config=lambda: config)

    mmf_cli.run.distributed_main(0, stub_configuration)  # what torchrun ranks reach
    assert compat.device_from_local_rank(mmf_cli.run)  # wrap the stand-in
    mmf_cli.run.distributed_main(0, stub_configuration)
    assert seen == [0, 1]


def test_setup_imports_imports_the_plugin_registry(monkeypatch, tmp_path):
    (tmp_path / "compat_fake_plugin_registry.py").write_text("IMPORTED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(compat, "PLUGIN_REGISTRY", "compat_fake_plugin_registry")
    monkeypatch.delitem(sys.modules, "compat_fake_plugin_registry", raising=False)

    mmf.utils.env.setup_imports.__wrapped__()
    assert "compat_fake_plugin_registry" not in sys.modules
    # While `import mmf` runs (rc10's registry calls setup_imports), plugins must wait.
    monkeypatch.setattr(sys.modules["mmf"].__spec__, "_initializing", True, raising=False)
    mmf.utils.env.setup_imports()
    assert "compat_fake_plugin_registry" not in sys.modules
    monkeypatch.setattr(sys.modules["mmf"].__spec__, "_initializing", False)
    mmf.utils.env.setup_imports()
    assert sys.modules["compat_fake_plugin_registry"].IMPORTED


# ------------------------------------------------------------- builders, metrics
def test_builders_get_a_default_update_registry_for_model(clean_registry):
    assert not hasattr(pristine("mmf.datasets.base_dataset_builder").BaseDatasetBuilder,
                       "update_registry_for_model")
    clean_registry.register_builder("compat_toy_data")(ToyBuilder)
    # rc10's build_dataset calls builder.update_registry_for_model() unconditionally.
    assert mmf.utils.build.build_dataset("compat_toy_data", OmegaConf.create({"x": 1})) is None


def test_metric_params_reach_the_metric(clean_registry):
    class Probe(mmf.modules.metrics.BaseMetric):
        def __init__(self, top_k=1):
            super().__init__("compat_probe")
            self.required_params = ["targets"]
            self.top_k = top_k

    clean_registry.register_metric("compat_probe")(Probe)
    entries = [OmegaConf.create({"type": "compat_probe", "params": {"top_k": 5}})]
    holder = types.SimpleNamespace()
    rc10 = mmf.modules.metrics.Metrics._init_metrics.__wrapped__(holder, entries)
    assert rc10["compat_probe"].top_k == 1  # params silently dropped

    metrics = mmf.modules.metrics.Metrics._init_metrics(holder, entries)
    assert metrics["compat_probe"].top_k == 5
    assert holder.required_params == {"dataset_name", "dataset_type", "targets"}
    plain = mmf.modules.metrics.Metrics._init_metrics(
        holder, ["compat_probe", {"type": "compat_probe", "params": {"top_k": 3}}])
    assert plain["compat_probe"].top_k == 3
    with pytest.raises(ValueError, match="no metric registered as 'nosuch'"):
        mmf.modules.metrics.Metrics._init_metrics(holder, ["nosuch"])


# ------------------------------------------------------------- detection / skips
def test_every_patch_is_needed_on_this_stack():
    patches = {p.__name__ for table in compat.PATCHES.values() for p in table}
    assert set(compat.APPLIED) == patches


def _fake(**attributes):
    return types.SimpleNamespace(__name__="fake", **attributes)


def _behaving_modules(tmp_path):
    """(patch, a module where MMF already behaves) pairs."""
    def get_rank():
        return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    def distributed_init(config):
        return torch.zeros(1)

    def main(configuration):
        return int(os.environ["LOCAL_RANK"])

    class Configuration:
        def _build_model_config(self, config):
            raise ValueError("unknown")

        def _decode_value(self, value):
            return {"false": False}.get(value, value)

        def _merge_with_dotlist(self, config, opts):
            for opt in opts:
                key, value = opt.split("=")
                OmegaConf.update(config, key, eval(value), merge=False)

        _build_dataset_config = _build_model_config

        def _register_resolvers(self):
            pass

    class Metrics:
        def _init_metrics(self, metric_list):
            return {m.type: registry.get_metric_class(m.type)(**m.params) for m in metric_list}

    class Builder:
        def update_registry_for_model(self, config):
            pass

    class Checkpoint:
        def _torch_load(self, file):
            allow_unsafe = self.config.checkpoint.allow_unsafe_load
            return torch.load(file, weights_only=not allow_unsafe)

    def build_trainer(config):
        raise ValueError("unknown trainer")

    existing = tmp_path / "defaults.yaml"
    existing.write_text("{}\n")
    return [
        (compat.shipped_default_config, _fake(get_default_config_path=lambda: str(existing))),
        (compat.unknown_names_raise, _fake(Configuration=Configuration)),
        (compat.yaml_override_values, _fake(Configuration=Configuration)),
        (compat.mapping_overrides_replace, _fake(Configuration=Configuration)),
        (compat.plugin_resolvers_survive, _fake(Configuration=Configuration)),
        (compat.unknown_trainer_raises, _fake(build_trainer=build_trainer)),
        (compat.logger_collections_abc, _fake(collections=collections.abc)),
        (compat.config_yaml_without_pretty, _fake()),
        (compat.rank_without_nccl, _fake(get_rank=get_rank)),
        (compat.distributed_init_on_cpu, _fake(distributed_init=distributed_init)),
        (compat.device_from_local_rank, _fake(run=main, distributed_main=main, main=main)),
        (compat.builder_registry_hook, _fake(BaseDatasetBuilder=Builder)),
        (compat.metric_params, _fake(Metrics=Metrics)),
        (compat.trusted_checkpoint_load, _fake(Checkpoint=Checkpoint)),
    ]


def test_patches_leave_an_mmf_that_already_behaves_alone(tmp_path, monkeypatch):
    from omegaconf import DictConfig

    monkeypatch.setattr(DictConfig, "pretty", lambda self: "", raising=False)
    for patch, module in _behaving_modules(tmp_path):
        before = dict(vars(module))
        assert patch(module) is False, patch.__name__
        assert vars(module) == before, patch.__name__
    assert compat.transformers_adamw() is False  # transformers already has AdamW now


# -------------------------------------------------------------------- end to end
TOY_PLUGIN = '''
import json, os, sys

import torch
import torch.distributed as dist

from mmf.common.registry import registry
from mmf.datasets.base_dataset_builder import BaseDatasetBuilder
from mmf.models.base_model import BaseModel
from mmf.utils import distributed as mmf_distributed

HERE = os.path.dirname(os.path.abspath(__file__))


@registry.register_model("compat_toy_model")
class ToyModel(BaseModel):
    @classmethod
    def config_path(cls):
        return os.path.join(HERE, "model.yaml")


@registry.register_builder("compat_toy_data")
class ToyBuilder(BaseDatasetBuilder):
    def __init__(self):
        super().__init__("compat_toy_data")

    @classmethod
    def config_path(cls):
        return os.path.join(HERE, "dataset.yaml")


@registry.register_trainer("compat_toy_trainer")
class ToyTrainer:
    def __init__(self, config):
        self.config = config

    def load(self):
        pass

    def train(self):
        total = torch.ones(1)
        dist.all_reduce(total)
        registry.get("writer").log_progress({"rank_done": dist.get_rank()})
        report = {
            "rank": mmf_distributed.get_rank(),
            "world_size": mmf_distributed.get_world_size(),
            "backend": dist.get_backend(),
            "device_id": self.config.device_id,
            "config_rank": self.config.distributed.rank,
            "all_reduce": total.item(),
            "width": self.config.model_config.compat_toy_model.width,
            "depth": self.config.dataset_config.compat_toy_data.depth,
            "writer_is_master": registry.get("writer")._is_master,
            "plugin_registry_imported": "mmf_fashionvil.registry" in sys.modules,
        }
        path = os.path.join(self.config.env.save_dir, f"report_{dist.get_rank()}.json")
        with open(path, "w") as f:
            json.dump(report, f)
'''


def test_mmf_run_under_torchrun_gives_each_cpu_rank_its_rank(tmp_path):
    plugin = tmp_path / "compat_toy_plugin"
    plugin.mkdir()
    (plugin / "__init__.py").write_text(TOY_PLUGIN)
    (plugin / "model.yaml").write_text("model_config: {compat_toy_model: {width: 7}}\n")
    (plugin / "dataset.yaml").write_text("dataset_config: {compat_toy_data: {depth: 5}}\n")
    (tmp_path / "tiny.yaml").write_text("training: {trainer: compat_toy_trainer}\n")
    save_dir = tmp_path / "save"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", MMF_RUN, f"config={tmp_path / 'tiny.yaml'}",
               "model=compat_toy_model", "dataset=compat_toy_data", "run_type=train",
               f"env.user_dir={plugin}", f"env.save_dir={save_dir}"]
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path, even on a GPU machine
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads((save_dir / f"report_{r}.json").read_text()) for r in (0, 1)]
    for rank, report in enumerate(reports):
        assert report == {
            "rank": rank, "world_size": 2, "backend": "gloo", "device_id": rank,
            "config_rank": rank, "all_reduce": 2.0, "width": 7, "depth": 5,
            "writer_is_master": rank == 0, "plugin_registry_imported": True,
        }
