"""``python -m mmf_fashionvil.prepare <release> --raw DIR --out DATA_DIR`` (see the package
docstring)."""
import argparse
import os
import time

from mmf_fashionvil.data.reading import ENCODINGS, IMAGE_STORES
from mmf_fashionvil.tools.prepare import fashion200k, fashiongen, fashioniq, polyvore
from mmf_fashionvil.tools.prepare.output import (
    PrepareError, StagedDataset, check_store_options,
)
from mmf_fashionvil.tools.prepare.pack import pack

RELEASES = {
    "fashiongen": ("FashionGen", fashiongen.prepare,
                   "the official fashiongen_256_256_{train,validation}.h5"),
    "fashion200k": ("Fashion200k", fashion200k.prepare,
                    "labels/*_{train,test}_detect_all.txt and the women/... image tree"),
    "polyvore": ("PolyvoreOutfits", polyvore.prepare,
                 "polyvore_item_metadata.json, {disjoint,nondisjoint}/{train,valid,test}.json, "
                 "images/"),
    "fashioniq": ("FashionIQ", fashioniq.prepare, "captions/, image_splits/, images/"),
}


def parser():
    main = argparse.ArgumentParser(
        prog="python -m mmf_fashionvil.prepare",
        description="Turn the official dataset releases into the layout the datasets read "
                    "(<out>/datasets/<Name>/), optionally with LMDB image stores.")
    commands = main.add_subparsers(dest="command", required=True)

    def store_options(command):
        command.add_argument("--out", required=True, help="the data dir (env.data_dir)")
        command.add_argument("--encoding", default="keep", choices=ENCODINGS,
                             help="LMDB values: the file's bytes (keep; pixel arrays: PNG), "
                                  "re-encoded JPEG/PNG, or raw uint8 pixels")
        command.add_argument("--resize", type=int, default=None,
                             help="LMDB: resize the shorter side to this first (as Resize(N))")

    for name, (dataset, _, raw) in RELEASES.items():
        command = commands.add_parser(name, help=f"{dataset} from {raw}")
        command.add_argument("--raw", required=True, help=f"the release folder ({raw})")
        store_options(command)
        command.add_argument("--store", default="files", choices=IMAGE_STORES,
                             help="images as files (copied) or one LMDB store per image folder")
        command.add_argument("--hardlink", action="store_true",
                             help="files: hard-link image files instead of copying (same disk)")
        command.add_argument("--overwrite", action="store_true",
                             help="replace a dataset prepared from other inputs or options")
        if name == "polyvore":
            command.add_argument("--seed", type=int, default=0,
                                 help="draws the blank of each valid/test outfit")
        if name == "fashioniq":
            command.add_argument("--skip-missing", action="store_true",
                                 help="drop triplets / split entries whose image is missing")
    command = commands.add_parser("pack", help="LMDB stores for the image folders of an "
                                               "existing layout")
    store_options(command)
    command.add_argument("--datasets", nargs="*", default=None,
                         help="FashionGen Fashion200k PolyvoreOutfits FashionIQ (default: all "
                              "present)")
    return main


def run(args):
    if args.command == "pack":
        check_store_options("lmdb", args.encoding, args.resize)
        for path, count in pack(args.out, args.datasets, args.encoding, args.resize).items():
            print(f"{path}: {count} images ({args.encoding}"
                  f"{f', resized to {args.resize}' if args.resize else ''})")
        return
    dataset, prepare, _ = RELEASES[args.command]
    check_store_options(args.store, args.encoding, args.resize)
    raw = os.path.abspath(args.raw)
    if not os.path.isdir(raw):
        raise PrepareError(f"--raw {raw}: no such folder")
    options = {"store": args.store, "encoding": args.encoding, "resize": args.resize,
               "hardlink": args.hardlink}
    extra = {}
    if args.command == "polyvore":
        extra["seed"] = options["seed"] = args.seed
    if args.command == "fashioniq":
        extra["skip_missing"] = options["skip_missing"] = args.skip_missing
    key = {"command": args.command, "raw": raw, "options": options}
    staged = StagedDataset(args.out, dataset, key, args.overwrite)
    if staged.up_to_date:
        print(f"{staged.target} is up to date (prepared from the same inputs and options)")
        return
    started = time.time()
    try:
        summary, inputs = prepare(staged, raw, args.store, args.encoding, args.resize,
                                  args.hardlink, **extra)
        staged.commit(summary.as_dict(), inputs)
    except BaseException:
        staged.abort()
        raise
    summary.print(dataset, staged.target)
    print(f"done in {time.time() - started:.1f} s")


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        run(args)
    except PrepareError as e:
        raise SystemExit(f"error: {e}") from None
