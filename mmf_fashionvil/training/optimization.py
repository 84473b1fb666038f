"""Optimization in the fashionvil_trainer: the optimizer (``optimizer.type`` / ``.params``,
param groups from the model), the learning-rate schedules (``scheduler.type`` / ``.params``)
and one optimizer step (unscale, clip, step)."""
import inspect
import math

import torch
from mmf.common.registry import registry
from mmf.utils.general import get_optimizer_parameters
from omegaconf import OmegaConf

SCHEDULES = ("warmup_linear", "warmup_cosine", "warmup_multistep")
SCHEDULE_PARAMS = {"num_warmup_steps", "num_training_steps", "milestones", "gamma",
                   "warmup_start_factor"}


def schedule_factor(kind, update, num_warmup_steps=0, num_training_steps=None,
                    milestones=(), gamma=0.1, warmup_start_factor=0.0):
    """Multiplier of the base lr for optimizer update ``update`` (0 = the first).

    Warm-up (update < W), with start factor s: s + (1 - s) * (update + 1) / W, a line from
    s (MMF's ``warmup_factor``; the authors pre-train with 0.25) to 1, so no update runs
    with lr 0 and update W-1 reaches the base lr. After warm-up, with T = num_training_steps:
    warmup_linear (T - update) / (T - W); warmup_cosine
    0.5 * (1 + cos(pi * (update - W) / (T - W))); warmup_multistep
    gamma ** (number of milestones <= update).
    """
    if update < num_warmup_steps:
        rise = (update + 1) / num_warmup_steps
        return warmup_start_factor + (1.0 - warmup_start_factor) * rise
    if kind == "warmup_multistep":
        return gamma ** sum(1 for milestone in milestones if update >= milestone)
    progress = min(1.0, (update - num_warmup_steps) / (num_training_steps - num_warmup_steps))
    if kind == "warmup_linear":
        return 1.0 - progress
    if kind == "warmup_cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"Unknown schedule '{kind}'; known: {', '.join(SCHEDULES)}")


def build_lr_scheduler(optimizer, scheduler_config, max_updates):
    """LambdaLR for ``scheduler: {type, params}``; stepped once after every
    optimizer update, so update u runs at base_lr * schedule_factor(u).
    Other types are looked up in MMF's scheduler registry. None without a type."""
    kind = scheduler_config.get("type") if scheduler_config else None
    if not kind:
        return None
    params = dict(scheduler_config.get("params") or {})
    if kind not in SCHEDULES:
        scheduler_class = registry.get_scheduler_class(kind)
        if scheduler_class is None:
            known = sorted(set(SCHEDULES) | set(registry.mapping["scheduler_name_mapping"]))
            raise ValueError(f"scheduler.type '{kind}' is unknown; known: {', '.join(known)}")
        return scheduler_class(optimizer, **params)
    unknown = set(params) - SCHEDULE_PARAMS
    if unknown:
        raise ValueError(
            f"scheduler.params {sorted(unknown)} not understood by '{kind}' "
            f"(accepted: {sorted(SCHEDULE_PARAMS)})"
        )
    warmup = int(params.get("num_warmup_steps", 0))
    total = int(params.get("num_training_steps") or max_updates)
    milestones = sorted(int(m) for m in params.get("milestones", []))
    gamma = float(params.get("gamma", 0.1))
    start = float(params.get("warmup_start_factor", 0.0))
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"scheduler '{kind}': warmup_start_factor must be in [0, 1], got {start}")
    if warmup < 0 or (kind != "warmup_multistep" and total <= warmup):
        raise ValueError(
            f"scheduler '{kind}': need 0 <= num_warmup_steps ({warmup}) < "
            f"num_training_steps ({total})"
        )

    def factor(update):
        return schedule_factor(kind, update, warmup, total, milestones, gamma, start)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(model, config):
    """``optimizer.type`` from torch.optim (or MMF's registry) over the model's param groups
    (its ``get_optimizer_parameters(config)`` where it has one)."""
    optimizer_config = OmegaConf.select(config, "optimizer")
    kind = optimizer_config.get("type") if optimizer_config else None
    if not kind:
        raise ValueError("Set optimizer.type (e.g. AdamW) and optimizer.params")
    params = OmegaConf.to_container(optimizer_config.get("params") or {}, resolve=True)
    optimizer_class = getattr(torch.optim, kind, None)
    if not (isinstance(optimizer_class, type)
            and issubclass(optimizer_class, torch.optim.Optimizer)):
        optimizer_class = registry.get_optimizer_class(kind)
    if optimizer_class is None:
        known = ", ".join(sorted(registry.mapping["optimizer_name_mapping"]))
        raise ValueError(
            f"optimizer.type '{kind}' is neither in torch.optim nor registered ({known})"
        )
    if "fused" not in params and _takes_fused(optimizer_class, model):
        # One kernel per step for all parameters, and the step counts stay on the device
        # (the unfused CPU path reads them back every step). optimizer.params.fused=false
        # turns it off.
        params["fused"] = True
    return optimizer_class(get_optimizer_parameters(model, config), **params)


def _takes_fused(optimizer_class, model):
    """Whether torch's ``optimizer_class`` has a fused implementation for the device of the
    model's floating-point parameters (Adam, AdamW, SGD on CUDA and CPU)."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    if optimizer_class.__module__.split(".")[:2] != ["torch", "optim"]:
        return False
    if "fused" not in inspect.signature(optimizer_class.__init__).parameters:
        return False
    devices = {p.device.type for p in model.parameters() if p.is_floating_point()}
    return len(devices) == 1 and devices <= set(_get_fused_kernels_supported_devices())


def optimizer_step(optimizer, parameters, scaler=None, max_grad_norm=None):
    """Unscales the gradients (fp16), clips their global L2 norm to
    ``max_grad_norm`` (after unscaling, so the threshold is in real units) and
    steps. Returns the norm before clipping, or None when not clipping."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = None
    if max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return norm



def restore_optimization(checkpoint, optimizer, lr_scheduler, scaler):
    """Loads the optimizer, scheduler and grad-scaler state of ``checkpoint`` but keeps the
    *settings* the optimizer and scheduler were built with (load_state_dict would bring back
    the old run's lr, weight decay, betas ...): a resume applies the current config.
    Returns the names of the settings that differ from the checkpoint's."""
    configured = [{k: v for k, v in group.items() if k != "params"}
                  for group in optimizer.param_groups]
    optimizer.load_state_dict(checkpoint["optimizer"])
    if lr_scheduler is not None and checkpoint.get("lr_scheduler") is not None:
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
    if scaler is not None and checkpoint.get("grad_scaler") is not None:
        scaler.load_state_dict(checkpoint["grad_scaler"])
    changed = set()
    for group, settings in zip(optimizer.param_groups, configured):
        for key, value in settings.items():
            if key not in ("lr", "initial_lr") and group.get(key) != value:
                changed.add(key)
                group[key] = value
    if isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
        # The schedule's position comes from the checkpoint, its base lrs from the config.
        base_lrs = [settings.get("initial_lr", settings["lr"]) for settings in configured]
        if base_lrs != list(lr_scheduler.base_lrs):
            changed.add("lr")
        lr_scheduler.base_lrs = base_lrs
        factors = [factor(lr_scheduler.last_epoch) for factor in lr_scheduler.lr_lambdas]
        for group, base_lr, factor in zip(optimizer.param_groups, base_lrs, factors):
            group["initial_lr"], group["lr"] = base_lr, base_lr * factor
    elif lr_scheduler is None:
        for group, settings in zip(optimizer.param_groups, configured):
            if group["lr"] != settings["lr"]:
                changed.add("lr")
            group["lr"] = settings["lr"]
    return sorted(changed)
