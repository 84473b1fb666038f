"""Checkpoint files: atomic writes, safe reads, and loading model weights from our own,
MMF's or bare state dicts."""
import copy
import errno
import os
import pickle
import re
import shutil

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Stored in every checkpoint; the string names the module that first wrote the format.
CHECKPOINT_FORMAT = "mmf_fashionvil.trainer/1"


# The temporary file of a save in progress: <name>.ckpt.tmp<pid>.
TEMPORARY_FILE = re.compile(r".+\.ckpt\.tmp\d+")
# Less free space than this after a failed write: call the disk full.
FULL_DISK_BYTES = 64 * 2**20


def save_atomic(state, path):
    """torch.save to a temporary file in the same folder, fsync, then rename:
    a killed process leaves either the old file or the new one, never half (and a
    temporary file that :func:`remove_interrupted_saves` removes at the next start).
    A failed write raises OSError naming the path and the cause."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:
        # torch's zip writer reports a full disk as "[enforce fail at inline_container.cc]".
        free = shutil.disk_usage(folder).free
        full = getattr(error, "errno", None) == errno.ENOSPC or free < FULL_DISK_BYTES
        cause = (f"the disk is full ({free / 2**20:.0f} MiB free in {folder})" if full
                 else str(error))
        raise OSError(getattr(error, "errno", None) or 0,
                      f"Could not write checkpoint '{path}': {cause}; the previous file "
                      "there, if any, is intact") from error
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def remove_interrupted_saves(save_dir):
    """Removes the temporary files that saves killed mid-write left in ``save_dir`` and
    ``save_dir/models`` (ours only: ``*.ckpt.tmp<pid>``); returns their paths."""
    removed = []
    for folder in (save_dir, os.path.join(save_dir, "models")):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if TEMPORARY_FILE.fullmatch(name):
                os.remove(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
    return removed


def plain_config(config):
    """A plain container of a config (node): resolved where its interpolations still resolve
    (a checkpoint keeps the run's values), else as written."""
    if not OmegaConf.is_config(config):
        return copy.deepcopy(config)
    try:
        return OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(config, resolve=False)


def read_checkpoint(path, allow_unsafe=False, map_location="cpu"):
    """Loads a checkpoint on the CPU (or where ``map_location``, as torch.load takes it, says).

    Our checkpoints hold only tensors and plain Python values, so they load with
    ``weights_only=True`` (no arbitrary code runs while unpickling). Older MMF
    checkpoints may pickle other objects; ``allow_unsafe`` (config
    ``checkpoint.allow_unsafe_load``) loads those with weights_only=False and is
    only for files you trust. A file in neither of torch.save's formats is called no
    checkpoint, whatever torch.load made of it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file '{path}' does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=not allow_unsafe)
    except Exception as e:
        with open(path, "rb") as f:
            head = f.read(4)
        # torch.save writes a zip archive; before torch 1.6, a pickle (protocol 2 and up).
        if head != b"PK\x03\x04" and head[:2] not in (b"\x80\x02", b"\x80\x03",
                                                      b"\x80\x04", b"\x80\x05"):
            what = "it is empty" if not head else "it is neither a zip archive nor a pickle"
            raise ValueError(
                f"File '{path}' is not a checkpoint (corrupt or truncated?): {what}"
            ) from None
        if isinstance(e, pickle.UnpicklingError) and not allow_unsafe:
            raise ValueError(
                f"Checkpoint '{path}' holds objects that torch.load(weights_only=True) refuses "
                f"({e}). If you trust the file, set checkpoint.allow_unsafe_load=true"
            ) from None
        if isinstance(e, (pickle.UnpicklingError, RuntimeError, EOFError, OSError)):
            raise ValueError(
                f"Checkpoint '{path}' cannot be read (corrupt or truncated?): {e}"
            ) from None
        raise


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


def load_model_weights(model, state_dict, path, require_all, required=None):
    """Copies the entries of ``state_dict`` whose name and shape match into
    ``model``. Returns {"missing", "unexpected", "mismatched"} name lists;
    with ``require_all`` missing or mis-shaped parameters are an error.
    ``required`` (a :class:`RequiredWeights`) refuses a checkpoint that fits too little of
    the model, before anything is copied."""
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
    if required is not None:
        required.check(model, matched, state_dict, path)
    # Bypass BaseModel.load_state_dict: keys are formatted above already.
    torch.nn.Module.load_state_dict(model, matched, strict=False)
    return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}


class RequiredWeights:
    """What a checkpoint loaded with ``checkpoint.resume_pretrained`` must fit, so that a
    checkpoint with other names (e.g. the authors' release before conversion) stops the
    run instead of leaving the model freshly initialised.

    The core = the model's parameters under ``prefixes`` (config ``checkpoint.pretrained_core``;
    null: the model's ``pretrained_core_prefixes``, for FashionViL the image encoder and the
    transformer). At least ``min_share`` of the core's parameter elements must load
    (``checkpoint.pretrained_min_share``). A model without a core (no prefixes) only needs
    one parameter to load."""

    SHOWN = 10  # unmatched names listed in the error

    def __init__(self, min_share=None, prefixes=None):
        self.min_share = 1.0 if min_share is None else float(min_share)
        if not 0.0 <= self.min_share <= 1.0:
            raise ValueError(f"checkpoint.pretrained_min_share must be in [0, 1], got {min_share}")
        self.prefixes = None if prefixes is None else tuple(str(p) for p in prefixes)

    def core_prefixes(self, model):
        if self.prefixes is not None:
            return self.prefixes
        return tuple(getattr(model, "pretrained_core_prefixes", ()))

    def check(self, model, matched, state_dict, path):
        prefixes = self.core_prefixes(model)
        parameters = dict(model.named_parameters())
        core = {name: p for name, p in parameters.items()
                if any(name == prefix or name.startswith(f"{prefix}.") for prefix in prefixes)}
        if prefixes and not core:
            raise ValueError(f"checkpoint.pretrained_core={list(prefixes)} names no parameter "
                             "of the model")
        if core:
            loaded = sum(p.numel() for name, p in core.items() if name in matched)
            share = loaded / sum(p.numel() for p in core.values())
            if share >= self.min_share:
                return
            what = (f"{share:.1%} of the parameters of {list(prefixes)} "
                    f"(checkpoint.pretrained_min_share={self.min_share})")
            unmatched = [name for name in core if name not in matched]
        else:
            if any(name in matched for name in parameters):
                return
            what = "none of the model's parameters"
            unmatched = list(parameters)
        shown = [f"{name} {tuple(parameters[name].shape)}"
                 + (f" (checkpoint: {tuple(state_dict[name].shape)})" if name in state_dict
                    else "") for name in unmatched[:self.SHOWN]]
        examples = list(state_dict)[:self.SHOWN]
        raise ValueError(
            f"Checkpoint '{path}' fits {what}; refusing to train from a mostly fresh model. "
            f"Not loaded ({len(unmatched)}): {', '.join(shown)}"
            f"{' ...' if len(unmatched) > self.SHOWN else ''}. The checkpoint's names begin "
            f"{examples}. The authors' released FashionViL checkpoint must be converted first: "
            "`python -m mmf_fashionvil.convert --checkpoint fashionvil_final.pth --out "
            "fashionvil_converted.ckpt`; another checkpoint's names can be mapped with "
            "checkpoint.pretrained_state_mapping; to load a part on purpose, lower "
            "checkpoint.pretrained_min_share or set checkpoint.pretrained_core"
        )


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
