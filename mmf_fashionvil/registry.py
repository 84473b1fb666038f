"""Imports every module that registers something into MMF's registry: the ``fashionvil``
model, its OCIR variant ``fashionvil_ocir_csa`` and the image tokenizer, their losses, the
metrics, datasets, processors and the trainer.

``mmf_run`` imports it by itself (compat makes rc10's ``setup_imports`` do it). Python code
that uses the registry without ``mmf_run`` does ``import mmf_fashionvil.registry``.
"""
# The compat hook must be in place before the first `import mmf`: setup.py's start-up .pth
# installs it at interpreter start; importing startup here also covers a plain checkout.
import mmf_fashionvil.startup  # noqa: F401

from mmf_fashionvil import metrics  # noqa: E402,F401
from mmf_fashionvil.data import processors  # noqa: E402,F401
from mmf_fashionvil.data.fashion200k import builder as fashion200k_builder  # noqa: E402,F401
from mmf_fashionvil.data.fashiongen import builder as fashiongen_builder  # noqa: E402,F401
from mmf_fashionvil.data.fashioniq import builder as fashioniq_builder  # noqa: E402,F401
from mmf_fashionvil.data.polyvore import builder as polyvore_builder  # noqa: E402,F401
from mmf_fashionvil.data.pretraining import builder as pretraining_builder  # noqa: E402,F401
from mmf_fashionvil.modeling import image_tokenizer, losses, model, ocir_csa  # noqa: E402,F401
from mmf_fashionvil.training import trainer  # noqa: E402,F401
