"""Checkpoint files: atomic writes, safe reads, and loading model weights from our own,
MMF's or bare state dicts."""
import os
import pickle

import torch

# Stored in every checkpoint; the string names the module that first wrote the format.
CHECKPOINT_FORMAT = "mmf_fashionvil.trainer/1"


def save_atomic(state, path):
    """torch.save to a temporary file in the same folder, fsync, then rename:
    a killed process leaves either the old file or the new one, never half."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def read_checkpoint(path, allow_unsafe=False):
    """Loads a checkpoint on the CPU.

    Our checkpoints hold only tensors and plain Python values, so they load with
    ``weights_only=True`` (no arbitrary code runs while unpickling). Older MMF
    checkpoints may pickle other objects; ``allow_unsafe`` (config
    ``checkpoint.allow_unsafe_load``) loads those with weights_only=False and is
    only for files you trust."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_unsafe)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"Checkpoint '{path}' holds objects that torch.load(weights_only=True) refuses "
            f"({e}). If you trust the file, set checkpoint.allow_unsafe_load=true"
        ) from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(
            f"Checkpoint '{path}' cannot be read (corrupt or truncated?): {e}"
        ) from None


def model_state_from_checkpoint(checkpoint, path):
    """The model's state dict in a checkpoint: ours / MMF's (key "model") or a
    bare state dict; DDP's "module." prefixes removed."""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"Checkpoint '{path}' holds no model state dict")
    return {key[len("module."):] if key.startswith("module.") else key: value
            for key, value in state.items()}


def apply_state_mapping(state_dict, mapping):
    """rc10's ``checkpoint.pretrained_state_mapping`` ({model prefix: checkpoint
    prefix}): only checkpoint keys under a mapped prefix are kept, renamed to the
    model prefix. An empty mapping keeps every key as it is."""
    if not mapping:
        return state_dict
    renamed = {}
    for own_prefix, checkpoint_prefix in mapping.items():
        for key, value in state_dict.items():
            if key.startswith(f"{checkpoint_prefix}."):
                renamed[f"{own_prefix}.{key[len(checkpoint_prefix) + 1:]}"] = value
    return renamed


def load_model_weights(model, state_dict, path, require_all):
    """Copies the entries of ``state_dict`` whose name and shape match into
    ``model``. Returns {"missing", "unexpected", "mismatched"} name lists;
    with ``require_all`` missing or mis-shaped parameters are an error."""
    if hasattr(model, "format_state_key"):
        state_dict = {model.format_state_key(k): v for k, v in state_dict.items()}
    own = model.state_dict()
    mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in state_dict if k not in own]
    matched = {k: v for k, v in state_dict.items() if k in own and k not in mismatched}
    missing = [k for k in own if k not in state_dict]
    if require_all and (missing or mismatched):
        raise ValueError(
            f"Checkpoint '{path}' does not fit the model: missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, shape mismatch {mismatched[:10]}"
        )
    # Bypass BaseModel.load_state_dict: keys are formatted above already.
    torch.nn.Module.load_state_dict(model, matched, strict=False)
    return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}


def save_numbered_checkpoint(state, save_dir, update, keep):
    """Writes ``state`` as <save_dir>/current.ckpt and, unless ``keep`` is 0, as
    models/model_<update>.ckpt, keeping the newest ``keep`` of those (-1: all).
    Returns the path of current.ckpt."""
    current = os.path.join(save_dir, "current.ckpt")
    if keep == 0:
        save_atomic(state, current)
        return current
    models_dir = os.path.join(save_dir, "models")
    snapshot = os.path.join(models_dir, f"model_{update}.ckpt")
    save_atomic(state, snapshot)
    link = f"{current}.tmp{os.getpid()}"
    try:
        # A hard link avoids writing the same bytes twice.
        os.link(snapshot, link)
        os.replace(link, current)
    except OSError:
        if os.path.exists(link):
            os.remove(link)
        save_atomic(state, current)
    if keep > 0:
        snapshots = sorted(
            (f for f in os.listdir(models_dir) if f.startswith("model_") and f.endswith(".ckpt")),
            key=lambda f: int(f[len("model_"):-len(".ckpt")]),
        )
        for old in snapshots[:-keep]:
            os.remove(os.path.join(models_dir, old))
    return current
