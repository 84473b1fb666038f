"""Helpers the demo and the benchmarks share for running ``mmf_run`` steps as a user would
(each step a separate process, its output in a log file) and reading their logs, and for the
R@K tables they print (with the chance row)."""
import json
import math
import os
import shlex
import subprocess
import sys
import time

CONFIGS = "projects/fashionvil/configs"
KS = (1, 5, 10)  # the R@K columns of the retrieval tables


def mmf_run(args, log_path):
    """Runs one mmf_run process; its output goes to log_path (and the tail, on failure, to us).
    Returns the wall time in seconds."""
    command = [os.path.join(os.path.dirname(sys.executable), "mmf_run"), *args]
    print("$", " ".join(shlex.quote(a) for a in command), flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        with open(log_path) as log:
            sys.stderr.write("".join(log.readlines()[-40:]))
        raise SystemExit(f"mmf_run failed (exit {result.returncode}); full log: {log_path}")
    seconds = time.time() - start
    print(f"  done in {seconds:.0f} s, log: {log_path}", flush=True)
    return seconds


def python_module(module, args, log_path):
    """``python -m module args`` (e.g. the attribute miner), logged like mmf_run."""
    command = [sys.executable, "-m", module, *args]
    print("$", " ".join(shlex.quote(a) for a in command), flush=True)
    with open(log_path, "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        with open(log_path) as log:
            sys.stderr.write(log.read()[-4000:])
        raise SystemExit(f"{module} failed (exit {result.returncode}); full log: {log_path}")


def last_eval(save_dir, split):
    """The last evaluation record's metrics of a split from the trainer's eval_log.jsonl."""
    records = []
    with open(os.path.join(save_dir, "eval_log.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record.get("split") == split:
                records.append(record)
    if not records:
        raise SystemExit(f"no {split} evaluation in {save_dir}/eval_log.jsonl")
    return records[-1]["metrics"]


def metric(metrics, suffix):
    """The value of the one metric whose key ends with ``suffix``."""
    matches = [k for k in metrics if k.endswith(suffix)]
    if len(matches) != 1:
        raise SystemExit(f"expected one metric ending in {suffix}, found {matches}")
    return metrics[matches[0]]


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(
            f"{cell:.1f}" if isinstance(cell, float) else str(cell) for cell in row) + " |")
    return "\n".join(lines)


def chance_recall(catalog_dir):
    """Expected R@K of a random ranking on the FashionGen val split.

    ITR: one matching text among N texts -> K/N. TIR: a product with m of the M
    images -> P(at least one of them in a random top K) = 1 - C(M-m, K)/C(M, K).
    """
    path = os.path.join(catalog_dir, "datasets", "FashionGen", "val_info.json")
    with open(path) as f:
        products = json.load(f)
    n_texts = len(products)
    n_images = sum(len(p["images"]) for p in products)
    result = {}
    for k in KS:
        itr = min(k, n_texts) / n_texts
        tir = sum(
            1 - math.comb(n_images - len(p["images"]), k) / math.comb(n_images, k)
            for p in products
        ) / n_texts
        result[k] = (100 * itr, 100 * tir)
    return result
