"""Where randomness comes from, so that a resumed run repeats the uninterrupted one.

- Seeds for separate purposes (data order, loader workers, the per-step task) are derived
  from (seed, ...) with :func:`derived_seed` and a distinct stream id each.
- The global RNG states (torch, numpy, python, cuda) are captured into checkpoints and
  restored by :func:`capture_rng_state` / :func:`restore_rng_state`; evaluation restores
  them too, so evaluating never changes training randomness.
- Per-item randomness of the datasets: ``data/base.py`` (torch's RNG re-seeded per item).
- Per-batch randomness of the model (hard negatives, patch masks, dropped tokens):
  :func:`batch_generator`.
"""
import random

import numpy as np
import torch

from mmf_fashionvil.distributed import get_rank

# Distinct stream ids so that seeds derived for different purposes never coincide.
SAMPLER_STREAM, LOADER_STREAM, TASK_STREAM, MODEL_STREAM = 1, 2, 3, 4


def derived_seed(*values):
    """A well-mixed 63-bit seed from integers (e.g. (seed, epoch, stream))."""
    entropy = [int(v) % (2**63) for v in values]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_generator(device="cpu", seed=None):
    """Generator on ``device`` for one batch's random choices in the model, seeded with
    ``seed`` XOR the rank (so ranks draw differently). The trainer passes the batch's
    ``random_seed`` (:func:`derived_seed` of (seed, update, micro-batch, MODEL_STREAM)): a
    host value, so no step waits for the device, and a resumed run draws the same. Without
    one (a model called directly) it is drawn from torch's global RNG."""
    if seed is None:
        seed = int(torch.randint(2**31, (1,)))
    return torch.Generator(device=device).manual_seed((int(seed) % 2**62) ^ get_rank())


def capture_rng_state(device):
    """The global RNG states, as tensors and plain Python values only so that
    checkpoints load with ``torch.load(weights_only=True)``."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((
        "MT19937",
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["pos"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
