"""Training curves from a run's logs (README "Outputs in env.save_dir"):

- ``train_log.jsonl``: one record per log interval: ``update``, ``loss``, ``losses`` {name:
  value}, ``task_losses`` {task: value} (optional; only the tasks run in the interval), ``lr``;
- ``eval_log.jsonl``: one record per evaluation: ``split``, ``update`` (null for a
  ``run_type=test`` run, which has no place on the update axis), ``metrics`` {key: value}.

:func:`training_series` extracts the plotted series; :func:`curves_figure` draws them.
"""
import json
import os

from mmf_fashionvil.tools.visualize import VisualizeError

TRAIN_REQUIRED = ("update",)
EVAL_REQUIRED = ("split", "update", "metrics")


def read_log(path, required_keys=()):
    """The records of a JSON-lines log, each checked to be an object with ``required_keys``;
    errors name the file and line."""
    if not os.path.isfile(path):
        raise VisualizeError(f"{path} does not exist")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise VisualizeError(f"{path}, line {number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise VisualizeError(f"{path}, line {number}: expected a JSON object")
            missing = [key for key in required_keys if key not in record]
            if missing:
                raise VisualizeError(f"{path}, line {number}: the record lacks {missing}")
            records.append(record)
    return records


def _append(series, name, update, value):
    if value is None:
        return
    updates, values = series.setdefault(name, ([], []))
    updates.append(update)
    values.append(float(value))


def training_series(train_records, eval_records=None):
    """The curves' data, each series a pair (updates, values) in log order:

    - ``loss``: {"total": the records' ``loss``};
    - ``task_loss``: {task: ``task_losses[task]``} (a task's points only where it was logged);
    - ``lr``: {"lr": ``lr``};
    - ``recall``: {metric key: value} for the ``metrics`` keys of ``eval_records`` that
      contain "r@", records without an update (test runs) left out.

    A group is {} when the logs lack it."""
    series = {"loss": {}, "task_loss": {}, "lr": {}, "recall": {}}
    for record in train_records:
        update = record["update"]
        _append(series["loss"], "total", update, record.get("loss"))
        _append(series["lr"], "lr", update, record.get("lr"))
        for task, value in (record.get("task_losses") or {}).items():
            _append(series["task_loss"], task, update, value)
    for record in eval_records or ():
        if record.get("update") is None:
            continue
        for key, value in (record.get("metrics") or {}).items():
            if "r@" in key:
                _append(series["recall"], key, record["update"], value)
    return series


def recall_panels(recall):
    """The R@K series grouped into one panel per evaluated split and protocol:
    {"val: general": {"itr_r@1": series, ...}} from keys such as
    'val/fashiongen/fashionvil_retrieval/general/itr_r@1' (the split is the first part, the
    protocol the one before the last)."""
    panels = {}
    for key, values in recall.items():
        parts = key.split("/")
        name = f"{parts[0]}: {parts[-2]}" if len(parts) >= 3 else "/".join(parts[:-1]) or "R@K"
        panels.setdefault(name, {})[parts[-1]] = values
    return panels


def _draw(axes, group, title, unit, styles=None, legend=False, last_update=None):
    for key, (updates, values) in group.items():
        style = {"marker": "o", "markersize": 3.5} if len(updates) < 30 else {}
        style.update((styles or {}).get(key, {}))
        axes.plot(updates, values, label=key, linewidth=1.2, **style)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("update")
    axes.set_ylabel(unit)
    axes.grid(alpha=0.3)
    if unit == "%":
        axes.set_ylim(-3, 103)
    if last_update:
        axes.set_xlim(0, last_update * 1.04)
    if len(group) > 1 or legend:
        axes.legend(fontsize=7, ncol=2 if len(group) > 4 else 1)


def _recall_styles(keys):
    """Colour by K; image->text (itr) solid with circles, text->image (tir) dashed with
    squares."""
    ks = sorted({key.split("@")[-1] for key in keys}, key=lambda k: (len(k), k))
    colours = {k: f"C{i % 10}" for i, k in enumerate(ks)}
    styles = {}
    for key in keys:
        text_query = key.startswith("tir")
        styles[key] = {"color": colours[key.split("@")[-1]], "linestyle": "--" if text_query
                       else "-", "marker": "s" if text_query else "o"}
    return styles


def curves_figure(series, title="", columns=3):
    """A matplotlib Figure of the series of :func:`training_series`: training loss, per-task
    training loss, learning rate, and R@K (one panel per split and protocol) when the eval
    log has them. Returns (figure, notes): the notes say which panels were left out and
    why."""
    from matplotlib.figure import Figure

    notes = []
    panels = [("training loss", series["loss"], "loss", None)]
    if series["task_loss"]:
        panels.append(("training loss per task", series["task_loss"], "loss", {}))
    else:
        notes.append("no task_losses in the train log: per-task loss panel left out")
    panels.append(("learning rate", series["lr"], "lr", None))
    if series["recall"]:
        for name, group in recall_panels(series["recall"]).items():
            panels.append((f"R@K, {name}", group, "%", _recall_styles(group)))
    else:
        notes.append("no R@K in an eval log: R@K panel left out")
    last_update = max((max(updates) for group in series.values()
                       for updates, _ in group.values() if updates), default=None)
    columns = min(columns, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure = Figure(figsize=(4.3 * columns, 3.4 * rows + 0.3), layout="constrained")
    for index, (name, group, unit, styles) in enumerate(panels):
        _draw(figure.add_subplot(rows, columns, index + 1), group, name, unit, styles,
              legend=styles is not None, last_update=last_update)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure, notes
