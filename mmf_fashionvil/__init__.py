"""FashionViL for MMF.

Rooms: ``modeling/`` (model, layers, losses, masking, image tokenizer), ``metrics/``,
``data/`` (one builder + dataset per dataset), ``training/`` (the trainer), ``tasks.py``,
``rng.py``, MMF plumbing (``compat.py``, ``startup.py``, ``registry.py``) and ``tools/``
(command-line tools; the library never imports them).

This file stays light: ``mmf_fashionvil.startup`` is imported at every interpreter start.
``import mmf_fashionvil.registry`` registers the model, losses, metrics, datasets,
processors and trainer into MMF's registry (``mmf_run`` does it by itself).
"""
import os

__version__ = "0.1.0"
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def load(checkpoint, device=None):
    """mmf_fashionvil.inference.load: the trained model ready to embed and match (see there)."""
    from mmf_fashionvil.inference import load as load_checkpoint
    return load_checkpoint(checkpoint, device)
