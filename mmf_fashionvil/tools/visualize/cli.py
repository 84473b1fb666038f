"""``python -m mmf_fashionvil.tools.visualize``: see the package's docstring."""
import argparse
import json
import os
import sys

from mmf_fashionvil.tools.visualize import VisualizeError
from mmf_fashionvil.tools.visualize.curves import (
    EVAL_REQUIRED,
    TRAIN_REQUIRED,
    curves_figure,
    read_log,
    training_series,
)

OUTPUTS = {  # what a run writes into --out
    "text_to_image": "retrieval_text_to_image.png",
    "image_to_text": "retrieval_image_to_text.png",
    "report": "retrieval.json",
    "tsne": "tsne.png",
    "curves": "curves.png",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mmf_fashionvil.tools.visualize",
        description="Retrieval grids, a t-SNE of the embeddings and training curves of a "
                    "FashionViL retrieval run (PNG files).")
    parser.add_argument("--save-dir", required=True,
                        help="the run's env.save_dir (checkpoints, train_log.jsonl, "
                             "eval_log.jsonl)")
    parser.add_argument("--data-dir", required=True,
                        help="the run's env.data_dir (holds datasets/FashionGen)")
    parser.add_argument("--out", help="output folder (default: SAVE_DIR/visualize)")
    parser.add_argument("--checkpoint",
                        help="checkpoint to embed with (default: SAVE_DIR/best.ckpt, else "
                             "SAVE_DIR/current.ckpt)")
    parser.add_argument("--split", default="val", help="FashionGen split (default: val)")
    parser.add_argument("--queries", type=int, default=4,
                        help="random queries per retrieval direction (default: 4)")
    parser.add_argument("--top-k", type=int, default=5, help="candidates shown per query")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the query draw and the t-SNE (default: 0)")
    parser.add_argument("--tsne-max-products", type=int, default=1000,
                        help="products in the t-SNE, drawn with --seed when the split has "
                             "more (0: all; default 1000)")
    parser.add_argument("--dpi", type=int, default=100, help="PNG resolution (default: 100)")
    parser.add_argument("--device", help="torch device for the model (default: the API's)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per encoder pass")
    args = parser.parse_args(argv)
    for name in ("queries", "top_k", "dpi", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.tsne_max_products < 0:
        parser.error("--tsne-max-products must be >= 0")
    return args


def find_checkpoint(save_dir, checkpoint=None):
    """``checkpoint`` when given, else ``save_dir/best.ckpt``, else ``save_dir/current.ckpt``;
    an error naming the files looked for when none exists."""
    if checkpoint:
        if not os.path.exists(checkpoint):  # a file, or a folder of tools/export
            raise VisualizeError(f"checkpoint {checkpoint} does not exist (--checkpoint)")
        return checkpoint
    candidates = [os.path.join(save_dir, name) for name in ("best.ckpt", "current.ckpt")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise VisualizeError(f"no checkpoint in {save_dir}: neither {candidates[0]} nor "
                         f"{candidates[1]} exists (or pass --checkpoint)")


def check_inputs(args):
    """Everything that can be checked before the model loads: (checkpoint, train records,
    eval records or None, output folder)."""
    if not os.path.isdir(args.save_dir):
        raise VisualizeError(f"save dir {args.save_dir} does not exist (--save-dir)")
    if not os.path.isdir(args.data_dir):
        raise VisualizeError(f"data dir {args.data_dir} does not exist (--data-dir)")
    train_log = os.path.join(args.save_dir, "train_log.jsonl")
    if not os.path.isfile(train_log):
        raise VisualizeError(f"{train_log} does not exist: --save-dir must be a training "
                             "run's env.save_dir")
    train_records = read_log(train_log, TRAIN_REQUIRED)
    if not train_records:
        raise VisualizeError(f"{train_log} has no records")
    eval_log = os.path.join(args.save_dir, "eval_log.jsonl")
    eval_records = read_log(eval_log, EVAL_REQUIRED) if os.path.isfile(eval_log) else None
    checkpoint = find_checkpoint(args.save_dir, args.checkpoint)
    out = args.out or os.path.join(args.save_dir, "visualize")
    return checkpoint, train_records, eval_records, out


def load_api(checkpoint, device=None):
    from mmf_fashionvil.inference import load

    try:
        return load(checkpoint, device=device)
    except (OSError, ValueError, KeyError) as error:
        raise VisualizeError(f"cannot load checkpoint {checkpoint}: {error}") from error


def _save(figure, path, dpi):
    figure.savefig(path, dpi=dpi)
    print(path, flush=True)
    return path


def run(args):
    """Writes the pictures; returns {output name: path}."""
    import torch

    from mmf_fashionvil.tools.visualize.figures import (
        grid_figure,
        tsne_figure,
        tsne_points,
    )
    from mmf_fashionvil.tools.visualize.ranking import read_split, retrieval_report

    checkpoint, train_records, eval_records, out = check_inputs(args)
    api = load_api(checkpoint, args.device)
    split = read_split(args.data_dir, args.split, getattr(api, "config", None))
    print(f"checkpoint {checkpoint}; {split.annotation_file}: {len(split.products)} products, "
          f"{len(split.item_paths)} images", flush=True)
    os.makedirs(out, exist_ok=True)
    from mmf_fashionvil.data.base import DataError

    try:
        with torch.no_grad():
            images = api.encode_images(split.item_paths, batch_size=args.batch_size)
            texts = api.encode_texts([p["text"] for p in split.products])
    except DataError as error:  # an unreadable image: the message names it
        raise VisualizeError(str(error)) from None
    images, texts = images.float().cpu(), texts.float().cpu()
    written = {}

    report = retrieval_report(split, images, texts, args.queries, args.seed, args.top_k)
    report["checkpoint"] = os.path.abspath(checkpoint)
    print("full ranking of these embeddings: " + ", ".join(
        f"{key} {value:.1f}" for key, value in report["recall"].items()), flush=True)
    for direction in ("text_to_image", "image_to_text"):
        written[direction] = _save(grid_figure(report, direction),
                                   os.path.join(out, OUTPUTS[direction]), args.dpi)
    written["report"] = os.path.join(out, OUTPUTS["report"])
    with open(written["report"], "w") as f:
        json.dump(report, f, indent=1)
    print(written["report"], flush=True)

    products, items = tsne_points(split, args.tsne_max_products, args.seed)
    if len(products) + len(items) < 5:
        print(f"t-SNE left out: {len(products) + len(items)} points are too few", flush=True)
    else:
        written["tsne"] = _save(tsne_figure(split, images, texts, products, items, args.seed),
                                os.path.join(out, OUTPUTS["tsne"]), args.dpi)

    figure, notes = curves_figure(training_series(train_records, eval_records),
                                  title=os.path.abspath(args.save_dir))
    eval_log = os.path.join(args.save_dir, "eval_log.jsonl")
    for note in notes:
        if eval_records is None and "R@K" in note:
            note = f"{eval_log} does not exist: R@K panel left out"
        print(f"note: {note}", flush=True)
    written["curves"] = _save(figure, os.path.join(out, OUTPUTS["curves"]), args.dpi)
    return written


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except VisualizeError as error:
        print(f"visualize: error: {error}", file=sys.stderr)
        sys.exit(2)
