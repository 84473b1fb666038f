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
With ``--itm-rerank-top-k K`` the XMR runs keep the checkpoint's ITM head (random without
one) and the table adds R@1 after re-ranking each query's top K with it.
"""
import argparse
import os
import time

from mmf_fashionvil.tools.mmf_runs import CONFIGS, last_eval, markdown_table, metric, mmf_run

# task -> (config, dataset, [(column, metric key suffix)]); the tiny configs' own metrics.
TASKS = {
    "xmr": ("xmr_tiny", "fashiongen", [
        ("ITR R@1", "general/itr_r@1"), ("ITR R@10", "general/itr_r@10"),
        ("TIR R@1", "general/tir_r@1"), ("TIR R@10", "general/tir_r@10")]),
    "tgir_fashioniq": ("tgir_fashioniq_tiny", "fashioniq", [
        ("R@10 (mean of 3)", "original/mean/r@10"), ("R@50", "original/mean/r@50")]),
    "tgir_fashion200k": ("tgir_fashion200k_tiny", "fashion200k_tgir", [
        ("R@1", "all/r@1"), ("R@10", "all/r@10"), ("R@50", "all/r@50")]),
    "scr_category": ("scr_category_tiny", "fashiongen", [
        ("accuracy", "fashionvil_accuracy/accuracy"), ("macro-F1", "fashionvil_macro_f1/macro_f1")]),
    "scr_subcategory": ("scr_subcategory_tiny", "fashiongen", [
        ("accuracy", "fashionvil_accuracy/accuracy"), ("macro-F1", "fashionvil_macro_f1/macro_f1")]),
    "ocir_nondisjoint": ("ocir_nondisjoint_tiny", "polyvore_ocir", [
        ("R@1", "target_category/weighted/r@1"), ("R@3", "target_category/weighted/r@3"),
        ("R@5", "target_category/weighted/r@5")]),
    "ocir_disjoint": ("ocir_disjoint_tiny", "polyvore_ocir", [
        ("R@1", "target_category/weighted/r@1"), ("R@3", "target_category/weighted/r@3"),
        ("R@5", "target_category/weighted/r@5")]),
}


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
