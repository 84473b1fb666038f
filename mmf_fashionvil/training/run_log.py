"""What the fashionvil_trainer logs while training: the per-interval statistics of
``train_log.jsonl`` (losses, per-task losses, model diagnostics, grad norm, lr) averaged
over the interval's updates and every rank, and small formatting helpers."""
import resource
import sys

import torch

from mmf_fashionvil import distributed


def to_float(value):
    if torch.is_tensor(value):
        return float(value.detach().float().mean())
    return float(value)


def format_seconds(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class IntervalStats:
    """This rank's sums over one log interval. Values stay tensors until :meth:`merge`, so
    recording an update does not wait for the device."""

    def __init__(self, first_update):
        self.first_update = first_update
        self.updates = 0
        self.loss = 0.0
        self.components, self.diagnostics, self.tasks = {}, {}, {}
        self.grad_norm = 0.0
        self.time = 0.0
        self.lr = None

    def record(self, loss, components, diagnostics, task, lr, norm):
        """One update: its loss, loss components and ``diagnostics`` (the means of the
        scalars a model may return in ``output["diagnostics"]``, e.g. codebook usage), the
        task it ran (or None), the lr it ran at and the gradient norm (or None)."""
        self.updates += 1
        self.loss = self.loss + loss
        for sums, values in ((self.components, components), (self.diagnostics, diagnostics)):
            for key, value in values.items():
                total, count = sums.get(key, (0.0, 0))
                sums[key] = (total + value, count + 1)
        if task is not None:
            total, count = self.tasks.get(task, (0.0, 0))
            self.tasks[task] = (total + loss, count + 1)
        if norm is not None:
            self.grad_norm = self.grad_norm + norm.detach().float()
        self.lr = lr

    def merge(self):
        """The interval's means over its updates and every rank (a collective: every rank
        calls it): {"updates" (all ranks'), "loss", "losses", "task_losses", "diagnostics",
        "grad_norm", "lr", "time"}."""
        local = {
            "updates": self.updates,
            "loss": to_float(self.loss),
            "components": {k: (to_float(s), c) for k, (s, c) in self.components.items()},
            "diagnostics": {k: (to_float(s), c) for k, (s, c) in self.diagnostics.items()},
            "tasks": {k: (to_float(s), c) for k, (s, c) in self.tasks.items()},
            "grad_norm": to_float(self.grad_norm),
        }
        everyone = distributed.gather_objects(local)

        def mean_of(field):
            merged = {}
            for part in everyone:
                for key, (total, count) in part[field].items():
                    old_total, old_count = merged.get(key, (0.0, 0))
                    merged[key] = (old_total + total, old_count + count)
            return {key: total / count for key, (total, count) in sorted(merged.items())}

        updates = sum(part["updates"] for part in everyone)
        return {
            "updates": updates,
            "loss": sum(part["loss"] for part in everyone) / updates,
            "losses": mean_of("components"),
            "task_losses": mean_of("tasks"),
            "diagnostics": mean_of("diagnostics"),
            "grad_norm": sum(part["grad_norm"] for part in everyone) / updates,
            "lr": self.lr,
            "time": self.time,
        }


class TensorBoardLog:
    """The scalars of the train_log.jsonl and eval_log.jsonl records, as TensorBoard event
    files in ``log_dir`` (``training.tensorboard=True``; rank 0 only), step = update."""

    def __init__(self, log_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError("training.tensorboard=True needs the tensorboard package "
                              "(pip install tensorboard)") from error
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir)

    def write_train(self, record):
        scalars = {f"train/{key}": record[key] for key in
                   ("loss", "lr", "samples_per_s", "peak_memory_mb", "grad_norm") if key in record}
        for group in ("losses", "task_losses", "diagnostics"):
            scalars.update({f"train/{group}/{k}": v for k, v in record.get(group, {}).items()})
        self._write(scalars, record["update"])

    def write_eval(self, record):
        # Metric and loss keys already start with "<split>/<dataset>/".
        scalars = {**record["metrics"], **record["losses"],
                   **{f"{record['split']}/diagnostics/{k}": v
                      for k, v in record["diagnostics"].items()}}
        self._write(scalars, record["update"] or 0)

    def _write(self, scalars, step):
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a crash later keeps what was logged

    def close(self):
        self.writer.close()
