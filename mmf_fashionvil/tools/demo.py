"""The end-to-end demo (README command (a)), on CPU in about ten minutes.

1. writes a synthetic catalog, 2. pre-trains FashionViL with ITC, 3. fine-tunes
image<->text retrieval from scratch and from the pre-trained model, 4. evaluates
both with ``run_type=test``, and prints R@1/5/10 next to chance. Every step is a
real ``mmf_run`` process, exactly what a user would type.

    python -m mmf_fashionvil.demo [--out demo_out] [--products 600]
"""
import argparse
import os
import time

from mmf_fashionvil.tools.mmf_runs import (
    CONFIGS, KS, chance_recall, last_eval, markdown_table, metric, mmf_run,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--products", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    catalog = os.path.join(out, "catalog")
    os.makedirs(out, exist_ok=True)
    started = time.time()

    from mmf_fashionvil.tools.synthetic import generate_catalog

    if not os.path.isfile(os.path.join(catalog, "catalog.json")):
        print(f"Writing a synthetic catalog of {args.products} products to {catalog}", flush=True)
        generate_catalog(catalog, seed=args.seed, num_products=args.products, image_size=64)

    common = [f"env.data_dir={catalog}", f"training.seed={args.seed}", "model=fashionvil",
              "dataset=fashiongen"]
    pretrain_dir = os.path.join(out, "pretrain_itc")
    mmf_run([f"config={CONFIGS}/pretraining/itc_tiny.yaml", *common,
             f"env.save_dir={pretrain_dir}"], os.path.join(out, "pretrain.log"))

    runs = {  # table row -> (folder name, extra options)
        "fine-tuned from scratch": ("scratch", []),
        "pre-trained + fine-tuned": ("pretrained", [
            f"checkpoint.resume_file={pretrain_dir}/current.ckpt",
            "checkpoint.resume_pretrained=True",
        ]),
    }
    table = {}
    for name, (slug, extra) in runs.items():
        save_dir = os.path.join(out, f"finetune_{slug}")
        mmf_run([f"config={CONFIGS}/finetuning/xmr_tiny.yaml", *common,
                 f"env.save_dir={save_dir}", *extra], os.path.join(out, f"finetune_{slug}.log"))
        # Evaluate the saved model in a separate process, as a user would.
        test_dir = os.path.join(out, f"test_{slug}")
        mmf_run([f"config={CONFIGS}/finetuning/xmr_tiny.yaml", *common, "run_type=test",
                 f"env.save_dir={test_dir}", f"checkpoint.resume_file={save_dir}/current.ckpt"],
                os.path.join(out, f"test_{slug}.log"))
        table[name] = last_eval(test_dir, "test")

    chance = chance_recall(catalog)
    print(f"\nFashionGen-format synthetic catalog, val split, full ranking "
          f"(R@K in %, {time.time() - started:.0f} s total)")
    header = ["model"] + [f"ITR R@{k}" for k in KS] + [f"TIR R@{k}" for k in KS]
    rows = [["chance"] + [chance[k][0] for k in KS] + [chance[k][1] for k in KS]]
    for name, metrics in table.items():
        # Full ranking ("general"); xmr_tiny.yaml may also report sample-100 ("kaleido").
        rows.append([name] + [metric(metrics, f"general/itr_r@{k}") for k in KS]
                    + [metric(metrics, f"general/tir_r@{k}") for k in KS])
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
