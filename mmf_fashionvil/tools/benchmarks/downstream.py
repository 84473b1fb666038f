"""The five downstream fine-tunes on the synthetic catalog, from scratch and from a
pre-trained checkpoint (issue 4), in one table.

    python -m mmf_fashionvil.tools.benchmarks.downstream --catalog DIR [--checkpoint CKPT]
        [--out bench_out/downstream] [--updates 200] [--seed 0] [--tasks xmr tgir_fashioniq ...]
        [--itm-rerank-top-k K]

For each task: an untrained model evaluated as is (the near-chance floor, measured), a
fine-tune from random initialisation, and, with ``--checkpoint`` (e.g. the ablation
benchmark's six-task pre-training, ``<out>/pretrain_all_six_*/current.ckpt``), a fine-tune
from it. Every fine-tuned model is evaluated in a separate ``run_type=test`` process from
its saved checkpoint. Finished runs (named by task, start and update count) are reused.
The OCIR tables start with the chance row of both conventions (:func:`ocir_chance`).
With ``--itm-rerank-top-k K`` the XMR runs keep the checkpoint's ITM head (random without
one) and the table adds R@1 after re-ranking each query's top K with it.
"""
import argparse
import json
import os
import time
from collections import Counter, defaultdict

from mmf_fashionvil.data.polyvore.dataset import read_ocir_entries
from mmf_fashionvil.tools.mmf_runs import CONFIGS, last_eval, markdown_table, metric, mmf_run

# OCIR: the authors' convention (blank-item gallery, mean over categories), then ours (every
# item, weighted by queries).
OCIR_COLUMNS = [(f"R@{k}", f"blank_items/mean/r@{k}") for k in (1, 3, 5)] + [
    (f"all items R@{k}", f"all_items/weighted/r@{k}") for k in (1, 3, 5)]
# SCR: macro-F1 as the authors (sklearn's), then over the classes in the targets only.
SCR_COLUMNS = [("accuracy", "fashionvil_accuracy/accuracy"),
               ("macro-F1", "fashionvil_macro_f1/macro_f1"),
               ("macro-F1 (target classes)", "fashionvil_macro_f1/macro_f1_target_classes")]
# task -> (config, dataset, [(column, metric key suffix)]); the tiny configs' own metrics.
TASKS = {
    "xmr": ("xmr_tiny", "fashiongen", [
        ("ITR R@1", "general/itr_r@1"), ("ITR R@10", "general/itr_r@10"),
        ("TIR R@1", "general/tir_r@1"), ("TIR R@10", "general/tir_r@10"),
        ("sample-100 ITR R@1", "kaleido/itr_r@1"), ("sample-100 TIR R@1", "kaleido/tir_r@1")]),
    "tgir_fashioniq": ("tgir_fashioniq_tiny", "fashioniq", [
        ("R@10 (mean of 3)", "original/mean/r@10"), ("R@50", "original/mean/r@50")]),
    "tgir_fashion200k": ("tgir_fashion200k_tiny", "fashion200k_tgir", [
        ("R@1", "all/r@1"), ("R@10", "all/r@10"), ("R@50", "all/r@50")]),
    "scr_category": ("scr_category_tiny", "fashiongen", SCR_COLUMNS),
    "scr_subcategory": ("scr_subcategory_tiny", "fashiongen", SCR_COLUMNS),
    "ocir_nondisjoint": ("ocir_nondisjoint_tiny", "polyvore_ocir", OCIR_COLUMNS),
    "ocir_disjoint": ("ocir_disjoint_tiny", "polyvore_ocir", OCIR_COLUMNS),
}


def ocir_chance(catalog, split, ks=(1, 3, 5)):
    """Expected R@K of a random ranking on a catalog's OCIR test file, in OCIR_COLUMNS' order:
    one positive among the n candidates of its category hits with probability min(k, n) / n;
    the authors' convention over the category's distinct blank items, averaged over
    categories, ours over all its items, weighted by queries."""
    root = os.path.join(catalog, "datasets", "PolyvoreOutfits")
    with open(os.path.join(root, "polyvore_item_metadata.json")) as handle:
        category = {item: entry["category_id"] for item, entry in json.load(handle).items()}
    blanks, items, queries = defaultdict(set), defaultdict(set), Counter()
    for question, blank in read_ocir_entries(os.path.join(root, f"ocir_{split}_test.json")):
        blanks[category[blank]].add(blank)
        queries[category[blank]] += 1
        for item in [*question, blank]:
            items[category[item]].add(item)

    def hit(k, candidates):
        return min(k, len(candidates)) / len(candidates)

    means = [100 * sum(hit(k, blanks[c]) for c in queries) / len(queries) for k in ks]
    weighted = [100 * sum(queries[c] * hit(k, items[c]) for c in queries)
                / sum(queries.values()) for k in ks]
    return means + weighted


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True, help="a synthetic catalog (env.data_dir)")
    parser.add_argument("--checkpoint", help="pre-trained FashionViL checkpoint to start from")
    parser.add_argument("--out", default="bench_out/downstream")
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--itm-rerank-top-k", type=int, default=0,
                        help="XMR: also report R@1 after ITM re-ranking of the top K")
    args = parser.parse_args(argv)
    out, catalog = os.path.abspath(args.out), os.path.abspath(args.catalog)
    os.makedirs(out, exist_ok=True)
    started = time.time()
    starts = {"untrained": None, "scratch": []}
    if args.checkpoint:
        starts["pre-trained"] = [f"checkpoint.resume_file={os.path.abspath(args.checkpoint)}",
                                 "checkpoint.resume_pretrained=True"]
    schedule = [f"training.max_updates={args.updates}",
                f"training.evaluation_interval={args.updates}",
                f"training.checkpoint_interval={args.updates}",
                f"scheduler.params.num_training_steps={args.updates}"]

    sections = []
    for task in args.tasks:
        config, dataset, columns = TASKS[task]
        common = [f"config={CONFIGS}/finetuning/{config}.yaml", "model=fashionvil",
                  f"dataset={dataset}", f"env.data_dir={catalog}", f"training.seed={args.seed}"]
        name = task
        k = args.itm_rerank_top_k
        if task == "xmr" and k:
            common.append(f"model_config.fashionvil.heads.itm.rerank_top_k={k}")
            columns = columns + [(f"ITR R@1 ITM top-{k}", f"general_itm_top{k}/itr_r@1"),
                                 (f"TIR R@1 ITM top-{k}", f"general_itm_top{k}/tir_r@1")]
            name = f"{task}_itm{k}"
        rows = []
        if task.startswith("ocir_"):
            rows.append(["chance"] + ocir_chance(catalog, task[len("ocir_"):]))
        for start, init in starts.items():
            run = f"{name}_{start.replace('-', '')}_{args.updates}"
            test_dir = os.path.join(out, f"test_{run}")
            test_args = [*common, "run_type=test", f"env.save_dir={test_dir}"]
            if init is not None:
                train_dir = os.path.join(out, f"train_{run}")
                if not os.path.isfile(os.path.join(train_dir, "current.ckpt")):
                    mmf_run([*common, f"env.save_dir={train_dir}", *init, *schedule],
                            os.path.join(out, f"train_{run}.log"))
                test_args.append(f"checkpoint.resume_file={train_dir}/current.ckpt")
            if not os.path.isfile(os.path.join(test_dir, "eval_log.jsonl")):
                mmf_run(test_args, os.path.join(out, f"test_{run}.log"))
            metrics = last_eval(test_dir, "test")
            rows.append([start] + [metric(metrics, suffix) for _, suffix in columns])
        sections.append((task, dataset, columns, rows))

    print(f"\nDownstream fine-tunes on the synthetic catalog {catalog}: tiny FashionViL, "
          f"{args.updates} updates each (batch 32), test split of each dataset, in %; "
          f"{time.time() - started:.0f} s in all")
    for task, dataset, columns, rows in sections:
        print(f"\n{task} ({dataset})")
        print(markdown_table(["start"] + [name for name, _ in columns], rows))


if __name__ == "__main__":
    main()
