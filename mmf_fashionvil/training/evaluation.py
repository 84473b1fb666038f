"""Evaluation in the fashionvil_trainer: the configured metrics, and one pass of the model
over a split on every rank whose per-batch values and collected rows are gathered and
turned into one report on rank 0 (broadcast back to every rank).

Metrics are MMF's per-batch ``calculate(batch, output)`` kind (averaged over samples) or
dataset-level ones (``collect`` per batch, ``compute`` once on the whole split's rows; see
``mmf_fashionvil/metrics/ranking.py``)."""
import torch
from mmf.common.registry import registry
from omegaconf import OmegaConf

from mmf_fashionvil import distributed
from mmf_fashionvil.metrics.ranking import evaluation_device
from mmf_fashionvil.modeling.losses import drop_skipped
from mmf_fashionvil.training.run_log import to_float


def build_metrics(entries):
    """{name: metric} from ``evaluation.metrics``: names or {type, params, name} entries."""
    if isinstance(entries, str) or OmegaConf.is_dict(entries):
        entries = [entries]
    metrics = {}
    for entry in entries or []:
        if isinstance(entry, str):
            kind, params, name = entry, {}, entry
        else:
            kind = entry.get("type")
            if not kind:
                raise ValueError(f"evaluation.metrics entry {entry} has no 'type'")
            params = OmegaConf.to_container(entry.get("params") or {}, resolve=True)
            name = entry.get("name") or kind
        metric_class = registry.get_metric_class(kind)
        if metric_class is None:
            known = ", ".join(sorted(registry.mapping["metric_name_mapping"]))
            raise ValueError(f"No metric registered as '{kind}'. Registered: {known}")
        if name in metrics:
            raise ValueError(f"Two evaluation metrics are named '{name}': give each a 'name'")
        metrics[name] = metric_class(**params)
    return metrics


def is_dataset_metric(metric):
    return hasattr(metric, "collect") and hasattr(metric, "compute")


def deduplicate_by_sample_index(collected):
    """Sorts the rows of a metric's collected tensors by ``sample_index`` and
    keeps the first row of each index. Keys whose row count differs from
    ``sample_index``'s (e.g. flat per-image rows) are passed through as they are."""
    if "sample_index" not in collected:
        return collected
    index = collected["sample_index"].reshape(-1).long()
    order = torch.argsort(index, stable=True)
    first = torch.ones(len(order), dtype=torch.bool)
    first[1:] = index[order][1:] != index[order][:-1]
    rows = order[first]
    return {key: value[rows] if value.shape[0] == len(index) else value
            for key, value in collected.items()}


def evaluate_split(model, batches, metrics, prefix, autocast):
    """Runs ``model`` (in eval mode, no grad) over this rank's ``batches`` (prepared sample
    lists) and returns, on every rank, {"metrics": {f"{prefix}/{name}[/key]": value},
    "losses": {...}, "diagnostics": {...}, "num_samples": N} for the whole split.
    Losses and diagnostics are sample-weighted means over every rank's batches.
    ``autocast()``: the context the model runs in."""
    loss_sums, diagnostic_sums, metric_sums, collected = {}, {}, {}, {}
    num_samples = 0
    with torch.no_grad():
        for batch in batches:
            with autocast():
                output = model(batch)
            size = batch.get_batch_size()
            num_samples += size
            for key, value in drop_skipped(output.get("losses") or {}).items():
                loss_sums[key] = loss_sums.get(key, 0.0) + value.detach().float().mean() * size
            for key, value in (output.get("diagnostics") or {}).items():
                diagnostic_sums[key] = (
                    diagnostic_sums.get(key, 0.0) + value.detach().float().mean() * size
                )
            for name, metric in metrics.items():
                if is_dataset_metric(metric):
                    for key, value in metric.collect(batch, output).items():
                        value = value.detach().cpu()
                        if value.is_floating_point():
                            value = value.float()
                        collected.setdefault(name, {}).setdefault(key, []).append(value)
                else:
                    value = metric.calculate(batch, output)
                    metric_sums[name] = metric_sums.get(name, 0.0) + to_float(value) * size

    local = {"num_samples": num_samples,
             "losses": {k: to_float(v) for k, v in loss_sums.items()},
             "diagnostics": {k: to_float(v) for k, v in diagnostic_sums.items()},
             "metrics": metric_sums}
    everyone = distributed.gather_objects(local)
    gathered = {name: distributed.gather_variable({k: torch.cat(v) for k, v in parts.items()})
                for name, parts in collected.items()}
    total = sum(part["num_samples"] for part in everyone)
    report = None
    if distributed.is_main_process():
        device = next(model.parameters()).device
        split = prefix.split("/")[0]
        losses, diagnostics = {}, {}
        for part in everyone:  # sample-weighted means over all ranks' batches
            for key, value in part["losses"].items():
                losses[key] = losses.get(key, 0.0) + value / total
            for key, value in part["diagnostics"].items():
                diagnostics[key] = diagnostics.get(key, 0.0) + value / total
        if losses:
            losses[f"{split}/total_loss"] = sum(losses.values())
        values = {}
        for name, metric in metrics.items():
            if name in gathered:
                rows = deduplicate_by_sample_index(gathered[name])
                # Rankings run on the model's device (the GPU when there is one).
                with evaluation_device(device):
                    if getattr(metric, "needs_model", False):
                        with autocast():
                            result = metric.compute(rows, model=model)
                    else:
                        result = metric.compute(rows)
                if isinstance(result, dict):
                    values.update({f"{prefix}/{name}/{k}": to_float(v) for k, v in result.items()})
                else:
                    values[f"{prefix}/{name}"] = to_float(result)
            elif name in metric_sums:
                weighted = sum(part["metrics"][name] for part in everyone)
                values[f"{prefix}/{name}"] = weighted / total
        report = {"metrics": values, "losses": dict(sorted(losses.items())),
                  "diagnostics": dict(sorted(diagnostics.items())), "num_samples": total}
    return distributed.broadcast_object(report)


def report_key(values, criterion, split, dataset_name):
    """The key of ``values`` (an evaluation report's losses and metrics) that a configured
    criterion (``training.best_metric`` / ``early_stop.criteria``) names: as given, or
    without its "<split>/" or "<split>/<dataset>/" prefix. None when absent."""
    candidates = [criterion, f"{split}/{criterion}", f"{split}/{dataset_name}/{criterion}"]
    return next((c for c in candidates if c in values), None)
