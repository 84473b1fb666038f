"""The generator's command line: ``python -m mmf_fashionvil.synthetic`` (or
``python -m mmf_fashionvil.tools.synthetic``) with the options of ``--help``."""
import argparse
import json
import time

from mmf_fashionvil.tools.synthetic.writers import (
    DEFAULT_IMAGE_SIZE, DEFAULT_PRODUCTS, MANIFEST, generate_catalog,
)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mmf_fashionvil.synthetic",
                                     description="Write a synthetic fashion catalog in the "
                                     "FashionGen/Fashion200k/Polyvore/FashionIQ layouts.")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous catalog)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--products", type=int, default=DEFAULT_PRODUCTS,
                        help=f"FashionGen products; other datasets scale with it (default {DEFAULT_PRODUCTS})")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering images")
    parser.add_argument("--format", default="layout", choices=("layout", "raw"),
                        help="layout: what the datasets read; raw: the official releases' files "
                             "(input of python -m mmf_fashionvil.prepare)")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        out = generate_catalog(args.out, args.seed, args.products, args.image_size, args.workers,
                               args.format)
    except (ValueError, FileExistsError) as e:
        parser.exit(2, f"error: {e}\n")
    with open(out / MANIFEST, encoding="utf-8") as f:
        images = json.load(f)["images"]
    print(f"Wrote a synthetic catalog ({args.products} FashionGen products, {images} images of "
          f"{args.image_size} px{', as the raw releases' if args.format == 'raw' else ''}) to "
          f"{out} in {time.time() - started:.1f} s")
