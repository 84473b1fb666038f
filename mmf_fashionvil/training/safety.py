"""What keeps a run from being poisoned or its configuration from lying: the guard against
non-finite losses and weights, and the check of the ``training.*`` / ``checkpoint.*`` keys
the fashionvil_trainer is given."""
import torch
from omegaconf import OmegaConf

from mmf_fashionvil import distributed

# Keys of configs/mmf_defaults.yaml that only rc10's own base_trainer reads. They stay in the
# defaults (rc10 reads them without checking they exist); fashionvil_trainer refuses any value
# other than the default instead of ignoring it.
UNSUPPORTED_KEYS = (
    "training.fast_read", "training.clip_norm_mode", "training.lr_scheduler",
    "training.lr_steps", "training.lr_ratio", "training.use_warmup", "training.warmup_factor",
    "training.warmup_iterations", "training.evaluate_metrics", "training.verbose_dump",
    "checkpoint.resume_zoo", "checkpoint.zoo_config_override",
    "checkpoint.save_git_details",
)
CHECKED_SECTIONS = ("training", "checkpoint")


def _unknown_keys(node, defaults, prefix):
    """Dotted names of the keys of ``node`` that ``defaults`` lacks; a mapping that is empty
    in the defaults (e.g. checkpoint.pretrained_state_mapping) takes any keys."""
    unknown = []
    for key, value in node.items():
        name = f"{prefix}.{key}"
        if key not in defaults:
            unknown.append(name)
        elif OmegaConf.is_dict(value) and OmegaConf.is_dict(defaults[key]) and defaults[key]:
            unknown += _unknown_keys(value, defaults[key], name)
    return unknown


def check_trainer_keys(config, defaults):
    """Raises ValueError naming every ``training.*`` / ``checkpoint.*`` key of ``config`` that
    the defaults do not have (a typo, or a key of another trainer), and every key in
    UNSUPPORTED_KEYS set to something other than its default."""
    problems = []
    for section in CHECKED_SECTIONS:
        problems += [f"{key} is not a known key"
                     for key in _unknown_keys(config[section], defaults[section], section)]
    for key in UNSUPPORTED_KEYS:
        value = OmegaConf.select(config, key, default=None)
        if value != OmegaConf.select(defaults, key, default=None):
            problems.append(f"{key}={value} is not supported by fashionvil_trainer (only "
                            "rc10's base_trainer reads it)")
    if problems:
        raise ValueError("Configuration: " + "; ".join(problems) + ". Known keys and their "
                         "defaults: mmf_fashionvil/configs/mmf_defaults.yaml")


class NonFiniteGuard:
    """Remembers, on the device, the first update whose loss was not finite, so that
    recording a loss costs no host synchronisation; :meth:`first_nonfinite_update` (a
    collective) reads it when a checkpoint is about to be written or at a log interval."""

    def __init__(self, device):
        self.first_update = torch.tensor(-1, device=device)
        self.tasks = {}  # update -> task, since the last read

    def record(self, update, loss, task):
        bad = ~torch.isfinite(loss.detach())
        self.first_update = torch.where(bad & (self.first_update < 0),
                                        torch.full_like(self.first_update, update),
                                        self.first_update)
        self.tasks[update] = task

    def first_nonfinite_update(self):
        """(update, task) of the first non-finite loss on any rank, or None."""
        updates = [u for u in distributed.gather_objects(int(self.first_update)) if u >= 0]
        found = (min(updates), self.tasks.get(min(updates))) if updates else None
        self.first_update.fill_(-1)
        self.tasks.clear()
        return found


def parameters_are_finite(model):
    """Whether every parameter and buffer of ``model`` is finite (one host sync)."""
    flags = [torch.isfinite(t).all() for t in [*model.parameters(), *model.buffers()]
             if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True
