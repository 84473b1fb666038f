"""Imports every module that registers something into MMF's registry.

compat makes rc10's ``setup_imports`` import this module, so ``mmf_run`` sees the
``fashionvil`` model and image tokenizer, their losses, metrics, datasets,
processors and the trainer.
"""
from mmf_fashionvil import image_tokenizer, losses, metrics, model, trainer  # noqa: F401
from mmf_fashionvil.data import processors  # noqa: F401
from mmf_fashionvil.data.fashiongen import builder as fashiongen_builder  # noqa: F401
from mmf_fashionvil.data.pretraining import builder as pretraining_builder  # noqa: F401
from mmf_fashionvil.data.fashion200k import builder as fashion200k_builder  # noqa: F401
from mmf_fashionvil.data.fashioniq import builder as fashioniq_builder  # noqa: F401
from mmf_fashionvil.data.polyvore import builder as polyvore_builder  # noqa: F401
