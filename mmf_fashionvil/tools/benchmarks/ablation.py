"""Pre-training task ablation on the synthetic catalog (issue 3; the paper's Table 5 idea).

    python -m mmf_fashionvil.tools.benchmarks.ablation [--out bench_out/ablation] [--products 600]
        [--pretrain-updates 400] [--finetune-updates 200] [--seed 0]

Steps, each a real process: write the catalog; mine PAC attributes (lexicon tagger, the
catalog's POS table); train the VQ-VAE image tokenizer; then for each variant pre-train the
tiny FashionViL on the union dataset with that variant's tasks (the authors' probabilities,
renormalised over the variant), fine-tune image<->text retrieval from it, evaluate the saved
fine-tuned model with ``run_type=test`` and print full-ranking R@K on FashionGen val. A
"no pre-training" row fine-tunes from random initialisation with the same schedule.
Finished steps (a save dir with its checkpoint / eval log, named by variant and update
counts) are reused when re-run, so an interrupted benchmark continues where it stopped.
"""
import argparse
import json
import os
import time

from mmf_fashionvil.tools.mmf_runs import (
    CONFIGS, KS, chance_recall, last_eval, markdown_table, metric, mmf_run, python_module,
)

VARIANTS = {  # row name -> pre-training tasks (None: no pre-training)
    "no pre-training": None,
    "ITC+ITM+MLM": ["itc", "itm", "mlm"],
    "+MVC": ["itc", "itm", "mlm", "mvc"],
    "+PAC": ["itc", "itm", "mlm", "pac"],
    "+MPFC": ["itc", "itm", "mlm", "mpfc"],
    "all six": ["itc", "itm", "mlm", "mpfc", "mvc", "pac"],
}
ATTRIBUTE_MIN_COUNT = 20  # the paper's 100 is for ~1M texts; the catalog has ~1k


def slug(name):
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def run_once(save_dir, done_file, args, log_path):
    """mmf_run unless ``save_dir/done_file`` exists (a finished earlier run)."""
    if os.path.isfile(os.path.join(save_dir, done_file)):
        print(f"  reusing {save_dir}", flush=True)
        return 0.0
    return mmf_run(args, log_path)


def prepare_pretraining(catalog, out, seed):
    """The attribute files (DIR/attributes) and the tokenizer checkpoint MPFC needs."""
    if not os.path.isfile(os.path.join(catalog, "attributes", "attributes.json")):
        python_module("mmf_fashionvil.tools.attributes", [
            "--data-dir", catalog, "--min-count", str(ATTRIBUTE_MIN_COUNT),
            "--tagger", "lexicon", "--lexicon", os.path.join(catalog, "vocab", "pos_lexicon.json"),
        ], os.path.join(out, "attributes.log"))
    tokenizer_dir = os.path.join(out, "image_tokenizer")
    run_once(tokenizer_dir, "best.ckpt", [
        f"config={CONFIGS}/pretraining/image_tokenizer_tiny.yaml",
        "model=fashionvil_image_tokenizer", "dataset=fashiongen", f"env.data_dir={catalog}",
        f"env.save_dir={tokenizer_dir}", f"training.seed={seed}",
    ], os.path.join(out, "image_tokenizer.log"))
    return os.path.join(tokenizer_dir, "best.ckpt")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/ablation")
    parser.add_argument("--products", type=int, default=600)
    parser.add_argument("--pretrain-updates", type=int, default=400)
    parser.add_argument("--finetune-updates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS),
                        help=f"subset of {list(VARIANTS)}")
    args = parser.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    out = os.path.abspath(args.out)
    catalog = os.path.join(out, "catalog")
    os.makedirs(out, exist_ok=True)
    started = time.time()

    from mmf_fashionvil.tools.synthetic import generate_catalog

    if not os.path.isfile(os.path.join(catalog, "catalog.json")):
        generate_catalog(catalog, seed=args.seed, num_products=args.products, image_size=64)
    tokenizer = prepare_pretraining(catalog, out, args.seed)

    common = [f"env.data_dir={catalog}", f"training.seed={args.seed}", "model=fashionvil"]
    pretrain_schedule = [
        f"training.max_updates={args.pretrain_updates}",
        f"training.evaluation_interval={args.pretrain_updates}",
        f"training.checkpoint_interval={args.pretrain_updates}",
        f"scheduler.params.num_training_steps={args.pretrain_updates}",
    ]
    finetune_schedule = [
        f"training.max_updates={args.finetune_updates}",
        f"training.evaluation_interval={args.finetune_updates}",
        f"training.checkpoint_interval={args.finetune_updates}",
        f"scheduler.params.num_training_steps={args.finetune_updates}",
    ]
    results, seconds = {}, {}
    for name in args.variants:
        # Settings in the folder names: a re-run reuses only runs made with the same ones.
        tasks = VARIANTS[name]
        run = f"{slug(name)}_{args.finetune_updates}" if tasks is None else \
            f"{slug(name)}_{args.pretrain_updates}_{args.finetune_updates}"
        start = time.time()
        init = []
        if tasks is not None:
            pretrain_dir = os.path.join(out, f"pretrain_{run}")
            run_once(pretrain_dir, "current.ckpt", [
                f"config={CONFIGS}/pretraining/final_tiny.yaml", *common,
                "dataset=fashion_pretraining", f"env.save_dir={pretrain_dir}",
                f"model_config.fashionvil.training_tasks={tasks!r}",
                f"model_config.fashionvil.heads.mpfc.tokenizer_checkpoint={tokenizer}",
                *pretrain_schedule,
            ], os.path.join(out, f"pretrain_{run}.log"))
            init = [f"checkpoint.resume_file={pretrain_dir}/current.ckpt",
                    "checkpoint.resume_pretrained=True"]
        finetune_dir = os.path.join(out, f"finetune_{run}")
        run_once(finetune_dir, "current.ckpt", [
            f"config={CONFIGS}/finetuning/xmr_tiny.yaml", *common, "dataset=fashiongen",
            f"env.save_dir={finetune_dir}", *init, *finetune_schedule,
        ], os.path.join(out, f"finetune_{run}.log"))
        test_dir = os.path.join(out, f"test_{run}")
        run_once(test_dir, "eval_log.jsonl", [
            f"config={CONFIGS}/finetuning/xmr_tiny.yaml", *common, "dataset=fashiongen",
            "run_type=test", f"env.save_dir={test_dir}",
            f"checkpoint.resume_file={finetune_dir}/current.ckpt",
        ], os.path.join(out, f"test_{run}.log"))
        results[name] = last_eval(test_dir, "test")
        seconds[name] = time.time() - start

    with open(os.path.join(catalog, "catalog.json")) as f:
        num_products = json.load(f)["products"]
    print(f"\nPre-training ablation: synthetic catalog ({num_products} products, seed "
          f"{args.seed}, 64 px), tiny FashionViL, pre-training {args.pretrain_updates} updates "
          f"(batch 32, union dataset), XMR fine-tuning {args.finetune_updates} updates; "
          f"FashionGen val, full ranking, R@K in %; {time.time() - started:.0f} s in all")
    chance = chance_recall(catalog)
    header = ["pre-training tasks"] + [f"ITR R@{k}" for k in KS] + \
        [f"TIR R@{k}" for k in KS] + ["R mean", "wall s"]
    rows = [["chance"] + [chance[k][0] for k in KS] + [chance[k][1] for k in KS]
            + [sum(chance[k][0] + chance[k][1] for k in KS) / (2 * len(KS)), "-"]]
    for name, metrics in results.items():
        rows.append([name] + [metric(metrics, f"general/itr_r@{k}") for k in KS]
                    + [metric(metrics, f"general/tir_r@{k}") for k in KS]
                    + [metric(metrics, "general/r_mean"), f"{seconds[name]:.0f}"])
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
