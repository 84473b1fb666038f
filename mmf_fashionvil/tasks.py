"""FashionViL's tasks: their names, how ``training_tasks`` / ``task_probabilities`` are read,
and the per-step draw of the task a training step runs.

The model (which heads to build, which forward branch runs) and the trainer (which task
each step runs) both read the tasks through :func:`parse_tasks`, so they never disagree.
"""
import torch
from omegaconf import OmegaConf

from mmf_fashionvil.rng import TASK_STREAM, derived_seed

PRETRAINING_TASKS = ("itc", "itm", "mlm", "mpfc", "mvc", "pac")
DOWNSTREAM_TASKS = ("xmr", "tgir", "scr", "ocir")
KNOWN_TASKS = PRETRAINING_TASKS + DOWNSTREAM_TASKS


def parse_task_names(value, config_key="training_tasks", known=None):
    """The list of task names of ``value``: a list, or one name given as a string
    (``training_tasks=itc`` on the command line). ``known``: the names allowed."""
    if value is None:
        return []
    tasks = [value] if isinstance(value, str) else [str(task) for task in value]
    unknown = [task for task in tasks if known is not None and task not in known]
    if unknown or (known is not None and not tasks) or len(set(tasks)) != len(tasks):
        expected = f"a non-empty list from {known}" if known else "distinct names"
        raise ValueError(f"{config_key}={tasks}: expected {expected}")
    return tasks


def parse_tasks(model_config, known=None):
    """(tasks, probabilities) from a model config's ``training_tasks`` and
    ``task_probabilities`` (a list aligned with the tasks or a {task: p} mapping whose
    entries for other tasks are ignored; default uniform; normalised to sum 1)."""
    tasks = parse_task_names(
        model_config.get("training_tasks") if model_config is not None else None, known=known
    )
    if not tasks:
        return [], []
    given = model_config.get("task_probabilities")
    if given is None or len(tasks) == 1:  # one task: nothing to draw
        weights = [1.0] * len(tasks)
    elif OmegaConf.is_dict(given) or isinstance(given, dict):
        missing = [t for t in tasks if t not in given]
        if missing:
            raise ValueError(f"task_probabilities has no entry for training task(s) {missing}")
        weights = [float(given[t]) for t in tasks]
    else:
        weights = [float(p) for p in given]
        if len(weights) != len(tasks):
            raise ValueError(
                f"task_probabilities has {len(weights)} values for {len(tasks)} "
                f"training_tasks {tasks}"
            )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"task_probabilities must be >= 0 with a positive sum, got {weights}")
    return tasks, [w / sum(weights) for w in weights]


def task_generator(seed, update):
    """The generator a step's task is drawn from: a function of (seed, update), so it is
    the same on every rank and after a resume, without communication."""
    return torch.Generator().manual_seed(derived_seed(seed, update, TASK_STREAM))


def draw_task(seed, update, tasks, probabilities):
    """The task that update ``update`` runs."""
    index = torch.multinomial(
        torch.tensor(probabilities, dtype=torch.float64), 1,
        generator=task_generator(seed, update),
    )
    return tasks[int(index)]
