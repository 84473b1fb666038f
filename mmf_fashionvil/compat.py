"""Makes mmf==1.0.0rc10 (2020) run on today's torch / transformers / omegaconf / Python.

Work in progress (v0: import paths only); see SPEC §6.
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types


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
    "torchtext": _torchtext_stub,
    "torchtext.vocab": lambda: _torchtext_stub().vocab,
}


def _legacy_adamw():
    import torch

    class AdamW(torch.optim.AdamW):
        """transformers 2.x AdamW: eps 1e-6 and no weight decay by default."""

        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6,
                     weight_decay=0.0, correct_bias=True):
            if not correct_bias:
                raise ValueError("AdamW(correct_bias=False) is not supported")
            super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    return AdamW


def _add_transformers_adamw():
    import transformers.optimization

    if not hasattr(transformers.optimization, "AdamW"):
        transformers.optimization.AdamW = _legacy_adamw()


# Patches applied just before an rc10 module executes (module name -> fn()).
BEFORE_IMPORT = {
    "mmf.modules.optimizers": _add_transformers_adamw,
}
# Patches applied right after an rc10 module executes (module name -> fn(module)).
AFTER_IMPORT = {}


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader, name):
        self.loader = loader
        self.name = name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        if self.name in BEFORE_IMPORT:
            BEFORE_IMPORT[self.name]()
        self.loader.exec_module(module)
        if self.name in AFTER_IMPORT:
            AFTER_IMPORT[self.name](module)


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, build):
        self.build = build

    def create_module(self, spec):
        return self.build()

    def exec_module(self, module):
        pass


class _CompatFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname in ALIASES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(ALIASES[fullname]))
        if fullname in BEFORE_IMPORT or fullname in AFTER_IMPORT:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is not None:
                spec.loader = _PatchingLoader(spec.loader, fullname)
            return spec
        return None


def install():
    if not any(isinstance(f, _CompatFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CompatFinder())
