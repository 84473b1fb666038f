"""Makes mmf==1.0.0rc10 (2020) run on today's Python, torch, transformers and omegaconf.

``install()`` (called at interpreter start by ``mmf_fashionvil.startup``) adds an import
hook that
- serves ALIASES: module names rc10 imports that no longer exist, only when the real
  module cannot be found;
- runs the patches of PATCHES just before (``@_before``) or right after (``@_after``)
  the named rc10 module executes. Patching right after execution also fixes names
  that other rc10 modules bind with ``from mmf.x import name``.
Each patch says in its docstring why it exists, checks that the installed MMF still
shows the problem, returns True when it changed something (names land in APPLIED),
and keeps what it replaced as ``__wrapped__``. See SPEC §6. This module is imported at
every interpreter start: keep its top-level imports cheap (no importlib.abc, no torch).
"""
import collections
import collections.abc
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

PLUGIN_REGISTRY = "mmf_fashionvil.registry"
DEFAULTS_YAML = os.path.join(os.path.dirname(__file__), "configs", "mmf_defaults.yaml")

APPLIED = []          # names of the patches that changed something, in order
PATCHES = {}          # (stage, module name) -> [patch functions]
_PLUGIN_RESOLVERS = {}


# --------------------------------------------------------------------- resolvers
def _register_resolver(name, function):
    from omegaconf import OmegaConf

    try:  # omegaconf 2.4
        OmegaConf.register_resolver(name, function, replace=True)
    except TypeError:  # omegaconf 2.1-2.3 call it register_new_resolver
        OmegaConf.register_new_resolver(name, function, replace=True)


def add_resolver(name, function):
    """Registers an omegaconf resolver that survives rc10's clear_resolvers()."""
    _PLUGIN_RESOLVERS[name] = function
    _register_resolver(name, function)


def register_resolvers():
    """(Re-)registers every resolver given to add_resolver()."""
    for name, function in _PLUGIN_RESOLVERS.items():
        _register_resolver(name, function)


# ----------------------------------------------------------------------- aliases
def _bert_module():
    from torch import nn
    from transformers.models.bert import modeling_bert

    alias = types.ModuleType("transformers.modeling_bert")
    alias.__dict__.update(
        {k: v for k, v in vars(modeling_bert).items() if not k.startswith("__")}
    )
    # transformers 4 dropped BertLayerNorm; it was always torch's LayerNorm.
    alias.BertLayerNorm = nn.LayerNorm
    return alias


def _reexport(target):
    def build():
        return importlib.import_module(target)

    return build


def _torchtext_stub():
    module = types.ModuleType("torchtext")
    vocab = types.ModuleType("torchtext.vocab")

    def missing(name):
        raise ImportError(
            "torchtext is discontinued and not installed; MMF's GloVe/FastText "
            f"vocabularies (torchtext.vocab.{name}) are unavailable"
        )

    vocab.__getattr__ = missing
    module.vocab = vocab
    return module


# Module names rc10 imports that no longer exist -> how to build them.
ALIASES = {
    "transformers.modeling_bert": _bert_module,
    "transformers.configuration_bert": _reexport(
        "transformers.models.bert.configuration_bert"
    ),
    "transformers.configuration_auto": _reexport(
        "transformers.models.auto.configuration_auto"
    ),
    "transformers.tokenization_auto": _reexport(
        "transformers.models.auto.tokenization_auto"
    ),
    "transformers.modeling_auto": _reexport("transformers.models.auto.modeling_auto"),
    "demjson": _reexport("demjson3"),
    "torchtext": _torchtext_stub,  # only mmf.utils.vocab's GloVe/FastText use it
}


# ------------------------------------------------------------------ patch helpers
def _patch_table_entry(stage, module_name):
    def add(patch):
        PATCHES.setdefault((stage, module_name), []).append(patch)
        return patch

    return add


def _before(module_name):
    """Marks a patch fn() to run just before module_name executes."""
    return _patch_table_entry("before", module_name)


def _after(module_name):
    """Marks a patch fn(module) to run right after module_name executes."""
    return _patch_table_entry("after", module_name)


def _replace(owner, name, replacement):
    """Puts replacement at owner.name, keeping the original as __wrapped__."""
    replacement.__wrapped__ = getattr(owner, name)
    replacement.__qualname__ = f"{getattr(owner, '__qualname__', owner.__name__)}.{name}"
    setattr(owner, name, replacement)


def _mentions(function, name):
    """Whether function's code uses the global/attribute `name` or the constant `name`."""
    code = function.__code__
    return name in code.co_names or name in code.co_consts


# ------------------------------------------------------------------------ patches
@_before("mmf.modules.optimizers")
def transformers_adamw():
    """rc10 registers transformers.optimization.AdamW (removed in transformers 4.x/5)."""
    import torch
    import transformers.optimization

    if hasattr(transformers.optimization, "AdamW"):
        return False

    class AdamW(torch.optim.AdamW):
        """transformers' old AdamW: eps 1e-6 and no weight decay by default."""

        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6,
                     weight_decay=0.0, correct_bias=True):
            if not correct_bias:
                raise ValueError("AdamW(correct_bias=False) is not supported")
            super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    transformers.optimization.AdamW = AdamW
    return True


@_after("mmf.utils.configuration")
def shipped_default_config(module):
    """The rc10 wheel reads mmf/configs/defaults.yaml but does not ship it."""
    if os.path.isfile(module.get_default_config_path()):
        return False

    def get_default_config_path():
        """mmf_fashionvil's defaults.yaml for rc10 (configs/mmf_defaults.yaml)."""
        return DEFAULTS_YAML

    _replace(module, "get_default_config_path", get_default_config_path)
    return True


@_after("mmf.utils.configuration")
def absent_options_are_none(module):
    """omegaconf>=2.1 raises on absent keys; rc10 reads opts.config/model/dataset(s) as None."""
    from omegaconf import OmegaConf

    try:
        OmegaConf.create().absent_key
        return False
    except AttributeError:
        pass
    original = module.Configuration._build_opt_list

    def _build_opt_list(self, opts):
        """rc10's option list, with None for the options it expects to be optional."""
        opts_config = original(self, opts)
        for key in ("config", "model", "dataset", "datasets"):
            if key not in opts_config:
                opts_config[key] = None
        return opts_config

    _replace(module.Configuration, "_build_opt_list", _build_opt_list)
    return True


def _registered_names(mapping_key):
    from mmf.common.registry import registry

    return ", ".join(sorted(registry.mapping[mapping_key])) or "none"


@_after("mmf.utils.configuration")
def unknown_names_raise(module):
    """rc10 only warns on an unknown model/dataset name, then crashes far from the cause."""
    import warnings

    from omegaconf import OmegaConf

    probe = OmegaConf.create({"model": "\0unregistered", "dataset": "\0unregistered",
                              "datasets": None})
    configuration = module.Configuration
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            configuration._build_model_config(None, probe)
            configuration._build_dataset_config(None, probe)
        except Exception:
            return False  # this MMF already refuses unknown names
    build_model_config = configuration._build_model_config
    build_dataset_config = configuration._build_dataset_config

    def _build_model_config(self, config):
        """rc10's model config, refusing a model name nobody registered."""
        from mmf.common.registry import registry

        name = config.model
        if name is not None and registry.get_model_class(name) is None:
            raise ValueError(
                f"model={name}: no model registered under that name. Registered "
                f"models: {_registered_names('model_name_mapping')}"
            )
        return build_model_config(self, config)

    def _build_dataset_config(self, config):
        """rc10's dataset configs, refusing a dataset name nobody registered."""
        from mmf.common.registry import registry

        names = config.datasets or config.dataset  # None: rc10 says it is required
        unknown = [n for n in (names.split(",") if names else [])
                   if registry.get_builder_class(n) is None]
        if unknown:
            raise ValueError(
                f"dataset={names}: no dataset builder registered as "
                f"{', '.join(unknown)}. Registered datasets: "
                f"{_registered_names('builder_name_mapping')}"
            )
        return build_dataset_config(self, config)

    _replace(configuration, "_build_model_config", _build_model_config)
    _replace(configuration, "_build_dataset_config", _build_dataset_config)
    return True


@_after("mmf.utils.configuration")
def yaml_override_values(module):
    """rc10 reads command-line values with ast.literal_eval only: `x=false` stays the
    string "false" (truthy) and `tasks=[itc,mlm]` a string. Later MMF reads them as YAML;
    so do we where literal_eval fails: true/false/null and [...] / {...} collections."""
    configuration = module.Configuration
    if configuration._decode_value(None, "false") is False:
        return False
    original = configuration._decode_value

    def _decode_value(self, value):
        """rc10's literal_eval reading, else YAML for booleans, null and collections."""
        decoded = original(self, value)
        if not isinstance(decoded, str) or decoded != value:
            return decoded
        text = value.strip()
        if text.lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[text.lower()]
        if text[:1] in ("[", "{"):
            import yaml

            # rc10's _build_opt_list has parsed every value as YAML already: this parses.
            return yaml.safe_load(text)
        return value

    _replace(configuration, "_decode_value", _decode_value)
    return True


@_after("mmf.utils.configuration")
def mapping_overrides_replace(module):
    """rc10 silently ignores `key={...}` when key holds a mapping (it walks into the mapping
    and sets nothing): `model_config.fashionvil.task_probabilities={itc: 1}` did nothing.
    Such a value now replaces the mapping; a value that is not a mapping is an error."""
    from omegaconf import OmegaConf

    configuration = module.Configuration
    original = configuration._merge_with_dotlist
    probe = OmegaConf.create({"probe": {"old": 1}})
    original(configuration.__new__(configuration), probe, ["probe={'new': 2}"])
    if "new" in probe.probe:
        return False

    def _merge_with_dotlist(self, config, opts):
        """rc10's merge, after replacing the mappings that opts give whole."""
        opts = list(opts or [])
        with_equals = bool(opts) and "=" in opts[0]  # rc10 takes `k=v ...` or `k v ...`
        if with_equals:
            pairs = [opt.split("=", 1) for opt in opts]
        else:
            pairs = list(zip(opts[0::2], opts[1::2]))
        remaining = []
        for key, value in pairs:
            try:
                current = OmegaConf.select(config, "datasets" if key == "dataset" else key)
            except Exception:  # a key rc10 reads otherwise (list index): leave it to rc10
                current = None
            if not OmegaConf.is_dict(current):
                remaining += [f"{key}={value}"] if with_equals else [key, value]
                continue
            decoded = self._decode_value(value)
            if not isinstance(decoded, dict):
                raise ValueError(
                    f"{key}={value}: {key} is a mapping; give a mapping ({key}={{name: "
                    f"value, ...}}) or set one entry ({key}.<name>=...)")
            print(f"Overriding option {key} to {value}")
            OmegaConf.update(config, key, decoded, merge=False)
        return original(self, config, remaining)

    _replace(configuration, "_merge_with_dotlist", _merge_with_dotlist)
    return True


@_after("mmf.utils.build")
def unknown_trainer_raises(module):
    """rc10 calls None(config) for an unregistered training.trainer: a bare TypeError."""
    from omegaconf import OmegaConf

    original = module.build_trainer
    try:
        original(OmegaConf.create({"training": {"trainer": "\0unregistered"}}))
    except TypeError:
        pass  # "'NoneType' object is not callable"
    except Exception:
        return False  # this MMF already refuses unknown names

    def build_trainer(config):
        """rc10's build_trainer, refusing a trainer name nobody registered."""
        from mmf.common.registry import registry

        name = config.training.trainer
        if registry.get_trainer_class(name) is None:
            raise ValueError(
                f"training.trainer={name}: no trainer registered under that name. "
                f"Registered trainers: {_registered_names('trainer_name_mapping')}"
            )
        return original(config)

    _replace(module, "build_trainer", build_trainer)
    return True


@_after("mmf.utils.configuration")
def plugin_resolvers_survive(module):
    """rc10 calls OmegaConf.clear_resolvers() on every get_config(), dropping our resolvers."""
    original = module.Configuration._register_resolvers
    if not _mentions(original, "clear_resolvers"):
        return False

    def _register_resolvers(self):
        """rc10's resolvers, then those added with compat.add_resolver()."""
        original(self)
        register_resolvers()

    _replace(module.Configuration, "_register_resolvers", _register_resolvers)
    return True


@_after("mmf.utils.logger")
def logger_collections_abc(module):
    """Python 3.10 removed collections.Mapping, which rc10's logger uses."""
    if hasattr(module.collections, "Mapping"):
        return False
    # Only the logger's own view of `collections` gains the old aliases.
    legacy = types.ModuleType("collections", "collections plus the pre-3.10 ABC aliases")
    legacy.__dict__.update(vars(collections))
    legacy.__dict__.update(
        {name: getattr(collections.abc, name) for name in collections.abc.__all__}
    )
    module.collections = legacy
    return True


@_after("mmf.utils.checkpoint")
def config_yaml_without_pretty(module):
    """omegaconf 2.1 removed DictConfig.pretty(), which rc10 uses to save config.yaml."""
    from omegaconf import DictConfig, OmegaConf

    if hasattr(DictConfig, "pretty"):
        return False

    def save_config(self):
        """Writes the resolved config to <save_dir>/config.yaml."""
        path = os.path.join(self.ckpt_foldername, "config.yaml")
        with module.PathManager.open(path, "w") as f:
            f.write(OmegaConf.to_yaml(self.config, resolve=True))

    _replace(module.Checkpoint, "save_config", save_config)
    return True


class _WeightsOnlyProbe:
    """An object torch.load(weights_only=True) refuses to unpickle."""


def _honours_unsafe_load_option(checkpoint_class):
    """Whether checkpoint_class._torch_load refuses a pickled object unless the config's
    checkpoint.allow_unsafe_load is true, and loads it when it is."""
    import tempfile

    import torch
    from omegaconf import OmegaConf

    loaded = []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "probe.ckpt")
        torch.save(_WeightsOnlyProbe(), path)
        for allow in (False, True):
            config = OmegaConf.create({"checkpoint": {"allow_unsafe_load": allow}})
            holder = types.SimpleNamespace(device="cpu", config=config)
            try:
                result = checkpoint_class._torch_load(holder, path)
            except Exception:
                result = None
            loaded.append(isinstance(result, _WeightsOnlyProbe))
    return loaded == [False, True]


def _unsafe_load_allowed(config):
    """Whether an rc10 config (DictConfig, dict or None) sets checkpoint.allow_unsafe_load
    to true; anything else, an absent key included, means weights only."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(config):
        config = OmegaConf.create(config or {})
    return OmegaConf.select(config, "checkpoint.allow_unsafe_load", default=False) is True


def _load_mmf_checkpoint(path, config, map_location):
    """read_checkpoint (weights only unless config allows unsafe loads; clear errors) with
    what MMF's own checkpoints need allowed. rc10 saves its config as plain containers and
    needs nothing more, but still reads Pythia v0.3 checkpoints, whose config is a
    pythia.utils.configuration.ConfigNode, an OrderedDict subclass (rc10 keeps the name as
    an empty one, used as a mapping only). Weights-only unpickling fills no dict subclass:
    it loads as an OrderedDict."""
    import torch

    from mmf_fashionvil.training.checkpoints import read_checkpoint

    mmf_classes = [(collections.OrderedDict, "pythia.utils.configuration.ConfigNode")]
    with torch.serialization.safe_globals(mmf_classes):
        return read_checkpoint(path, _unsafe_load_allowed(config), map_location)


@_after("mmf.utils.checkpoint")
def trusted_checkpoint_load(module):
    """rc10 unpickles whatever a checkpoint holds (torch<2.6: a resume_file can run code) or,
    on torch>=2.6, refuses its Pythia files with no way to opt in. It now loads weights
    only, unless the config sets checkpoint.allow_unsafe_load: true (files you trust)."""
    import torch

    if _honours_unsafe_load_option(module.Checkpoint):
        return False

    def _torch_load(self, file):
        """rc10's load of a resume file, weights only unless this Checkpoint's config
        (the trainer's) sets checkpoint.allow_unsafe_load: true."""
        module._hack_imports()  # Pythia's module names, for unsafe loads of its files
        on_gpu = "cuda" in str(self.device)
        return _load_mmf_checkpoint(file, self.config, self.device if on_gpu else "cpu")

    def load(f, map_location=None):
        """torch.load for load_pretrained_model (zoo models): weights only unless the
        global config (registry "config") sets checkpoint.allow_unsafe_load: true."""
        from mmf.common.registry import registry

        return _load_mmf_checkpoint(f, registry.get("config"), map_location)

    _replace(module.Checkpoint, "_torch_load", _torch_load)
    # Only mmf.utils.checkpoint sees this `torch`; everything else is the real module.
    scoped_torch = types.ModuleType("torch", "torch, with a load() that reads weights only")
    scoped_torch.__getattr__ = lambda name: getattr(torch, name)
    scoped_torch.load = load
    load.__wrapped__ = torch.load
    module.torch = scoped_torch
    return True


@_after("mmf.utils.distributed")
def rank_without_nccl(module):
    """rc10 reports rank 0 of 1 whenever NCCL is missing, so every gloo rank acts as master."""
    if not _mentions(module.get_rank, "is_nccl_available"):
        return False
    from torch import distributed as dist

    def get_rank():
        """This process's rank in the initialised process group, else 0."""
        return dist.get_rank() if dist.is_initialized() else 0

    def get_world_size():
        """Number of processes in the initialised process group, else 1."""
        return dist.get_world_size() if dist.is_initialized() else 1

    def synchronize():
        """Barrier over all ranks (no-op without a process group of 2+)."""
        if get_world_size() > 1:
            dist.barrier()

    # is_master() and rc10's reduce/gather helpers look these names up at call time.
    _replace(module, "get_rank", get_rank)
    _replace(module, "get_world_size", get_world_size)
    _replace(module, "synchronize", synchronize)
    return True


@_after("mmf.utils.distributed")
def distributed_init_on_cpu(module):
    """rc10's distributed_init warms up with a CUDA tensor: it cannot start CPU (gloo) ranks.
    It also refuses a world of one, which `torchrun --nproc_per_node=1` asks for."""
    original = module.distributed_init
    if not _mentions(original, "cuda"):
        return False
    import torch
    from torch import distributed as dist

    def distributed_init(config):
        """Starts the process group; backend null = nccl with CUDA, gloo without. A world of
        one process runs without a process group, as plain mmf_run does."""
        if config.distributed.world_size == 1 and not dist.is_initialized():
            config.distributed.rank = 0
            return 0
        if config.distributed.backend is None:
            config.distributed.backend = "nccl" if torch.cuda.is_available() else "gloo"
        if config.distributed.backend == "nccl" or dist.is_initialized():
            return original(config)  # CUDA warm-up / nothing to start
        dist.init_process_group(
            backend=config.distributed.backend,
            init_method=config.distributed.init_method,
            world_size=config.distributed.world_size,
            rank=config.distributed.rank,
        )
        print(f"Distributed init: rank {config.distributed.rank} of "
              f"{config.distributed.world_size} ({config.distributed.backend})", flush=True)
        dist.all_reduce(torch.zeros(1))  # fail now, not at the first training step
        module.suppress_output(module.is_master())
        config.distributed.rank = dist.get_rank()
        return config.distributed.rank

    _replace(module, "distributed_init", distributed_init)
    return True


@_after("mmf_cli.run")
def device_from_local_rank(module):
    """rc10 hands device 0 to every torchrun rank (LOCAL_RANK is ignored): all share GPU 0."""
    if any(_mentions(f, "LOCAL_RANK") for f in (module.run, module.distributed_main, module.main)):
        return False
    original = module.main

    def main(configuration, init_distributed=False, *args, **kwargs):
        """rc10's main, with config.device_id = LOCAL_RANK under torchrun, and the process
        group torn down in step when it returns: rc10 leaves that to interpreter exit,
        where a rank's gloo threads can outlive its peers' sockets and abort the process
        ("terminate called without an active exception") after a finished run."""
        from torch import distributed as dist

        local_rank = os.environ.get("LOCAL_RANK")
        if init_distributed and local_rank is not None:
            configuration.get_config().device_id = int(local_rank)
        result = original(configuration, init_distributed, *args, **kwargs)
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        return result

    _replace(module, "main", main)
    return True


@_after("mmf.utils.env")
def import_plugin_registrations(module):
    """rc10's setup_imports imports only rc10's own models and datasets, not ours."""
    original = module.setup_imports

    def setup_imports():
        """rc10's imports, then mmf_fashionvil.registry (our models, datasets, trainer)."""
        original()
        # rc10's registry module also calls this while `import mmf` runs: importing our
        # modules then would make `import mmf_fashionvil.x` circular. Every later call
        # (mmf_run calls it before reading the config) imports them.
        mmf_spec = getattr(sys.modules.get("mmf"), "__spec__", None)
        if getattr(mmf_spec, "_initializing", False):
            return
        if importlib.util.find_spec(PLUGIN_REGISTRY) is not None:
            importlib.import_module(PLUGIN_REGISTRY)

    _replace(module, "setup_imports", setup_imports)
    return True


@_after("mmf.datasets.base_dataset_builder")
def builder_registry_hook(module):
    """rc10 calls builder.update_registry_for_model() unconditionally; the base class lacks it."""
    builder = module.BaseDatasetBuilder
    if hasattr(builder, "update_registry_for_model"):
        return False

    def update_registry_for_model(self, config):
        """Nothing to publish to the registry (builders override this when they do)."""

    builder.update_registry_for_model = update_registry_for_model
    return True


def _metric_params_lost(metrics_class):
    """Runs rc10's _init_metrics on a probe metric and says whether its params got lost."""
    from omegaconf import OmegaConf

    from mmf.common.registry import registry

    class ParamsProbe:
        required_params = ()

        def __init__(self, **params):
            self.params = params

    names = registry.mapping["metric_name_mapping"]
    key = "\0mmf_fashionvil_params_probe"
    names[key] = ParamsProbe
    try:
        probe_list = [OmegaConf.create({"type": key, "params": {"p": 1}})]
        metrics = metrics_class._init_metrics(types.SimpleNamespace(), probe_list)
        return metrics[key].params != {"p": 1}
    finally:
        del names[key]


@_after("mmf.modules.metrics")
def metric_params(module):
    """rc10's Metrics._init_metrics drops the params of {type: x, params: {...}} entries."""
    if not _metric_params_lost(module.Metrics):
        return False

    def _init_metrics(self, metric_list):
        """One metric per entry of evaluation.metrics: a name or {type, params}."""
        from mmf.common.registry import registry

        self.required_params = {"dataset_name", "dataset_type"}
        metrics = {}
        for entry in metric_list:
            if isinstance(entry, str):
                name, params = entry, {}
            elif isinstance(entry, collections.abc.Mapping) and "type" in entry:
                name, params = entry["type"], entry.get("params") or {}
            else:
                raise ValueError(
                    f"evaluation.metrics entry {entry!r}: expected a metric name "
                    "or {type: <name>, params: {...}}"
                )
            metric_class = registry.get_metric_class(name)
            if metric_class is None:
                raise ValueError(
                    f"evaluation.metrics: no metric registered as '{name}'. Registered "
                    f"metrics: {_registered_names('metric_name_mapping')}"
                )
            metrics[name] = metric_class(**params)
            self.required_params.update(metrics[name].required_params)
        return metrics

    _replace(module.Metrics, "_init_metrics", _init_metrics)
    return True


# ------------------------------------------------------------------- import hook
def _run_patches(stage, name, *args):
    for patch in PATCHES.get((stage, name), ()):
        if patch(*args):
            APPLIED.append(patch.__name__)


class _PatchingLoader:
    """Wraps a module's real loader to run its patches around its execution."""

    def __init__(self, loader, name):
        self.loader = loader
        self.name = name

    def __getattr__(self, attribute):  # get_source, get_filename, ... of the real loader
        return getattr(self.loader, attribute)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        _run_patches("before", self.name)
        self.loader.exec_module(module)
        _run_patches("after", self.name, module)


class _AliasLoader:
    """Serves an alias: a new module, or an existing one under a second name."""

    def __init__(self, build):
        self.build = build
        self.own_spec = None

    def create_module(self, spec):
        module = self.build()
        self.own_spec = getattr(module, "__spec__", None)
        return module

    def exec_module(self, module):
        # importlib gave an existing module the alias's spec: give it its own back.
        if self.own_spec is not None:
            module.__spec__ = self.own_spec


class _CompatFinder:
    def find_spec(self, fullname, path, target=None):
        patched = ("before", fullname) in PATCHES or ("after", fullname) in PATCHES
        if fullname not in ALIASES and not patched:
            return None
        spec = self._real_spec(fullname, path, target)
        if spec is None and fullname in ALIASES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(ALIASES[fullname]))
        if spec is not None and patched:
            spec.loader = _PatchingLoader(spec.loader, fullname)
        return spec

    def _real_spec(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    return spec
        return None


def install():
    """Adds the import hook (idempotent); must run before anything imports mmf."""
    if not any(isinstance(f, _CompatFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CompatFinder())
