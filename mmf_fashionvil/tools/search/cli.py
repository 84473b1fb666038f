"""The command line: ``python -m mmf_fashionvil.tools.search {index,query,serve} ...``
(``--help`` of each for its options). Errors of the input are one line ``error: ...`` on
stderr and exit status 2; an interrupted ``index`` exits 130 keeping what it embedded."""
import argparse
import json
import os
import sys

from mmf_fashionvil.tools.search.index import (
    DEFAULT_CHUNK_SIZE, SearchError, SearchIndex, build_index, fashiongen_items, folder_items,
)
from mmf_fashionvil.tools.search.query import BACKENDS, clean_text, format_results, run_query

PROG = "python -m mmf_fashionvil.tools.search"


def parser():
    main = argparse.ArgumentParser(prog=PROG, description="Search a catalog's images with a "
                                   "trained FashionViL model: by text, or by a reference image "
                                   "and a text saying how to change it.")
    commands = main.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="embed a catalog's images into an index folder "
                                "(resumable: a re-run embeds only what is missing)")
    index.add_argument("--checkpoint", required=True,
                       help="a checkpoint (.ckpt) or an exported model folder")
    source = index.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", help="a folder of images (searched "
                        "recursively; unreadable files are skipped with a warning)")
    source.add_argument("--data-dir", metavar="D", help="an env.data_dir holding "
                        "datasets/FashionGen/<split>_info.json (one item per image)")
    index.add_argument("--dataset", choices=["fashiongen"], default="fashiongen",
                       help="the format of --data-dir (default fashiongen)")
    index.add_argument("--split", default="val", help="the split of --data-dir (default val)")
    index.add_argument("--out", required=True, metavar="INDEX", help="the index folder")
    index.add_argument("--batch-size", type=int, default=32, help="images per model call")
    index.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                       help=f"images per chunk file (default {DEFAULT_CHUNK_SIZE}): an "
                       "interruption loses at most one chunk")
    index.add_argument("--device", help="torch device (default: the API's choice)")

    query = commands.add_parser("query", help="print the best matches of one query")
    query.add_argument("--index", required=True, help="an index folder")
    query.add_argument("--checkpoint", help="the index's checkpoint (default: the path the "
                       "index recorded); another model's is refused")
    query.add_argument("--text", required=True, help="the query, or with --image how to "
                       "change the reference")
    query.add_argument("--image", metavar="REF", help="a reference image (a file or an item "
                       "id of the index): search for it changed as --text says")
    query.add_argument("--top-k", type=int, default=10, help="results to show (default 10; "
                       "more than the catalog holds is clamped to it with a note)")
    query.add_argument("--backend", choices=BACKENDS, default="exact",
                       help="exact (matrix product) or faiss (IndexFlatIP)")
    query.add_argument("--include-reference", action="store_true", help="keep a reference "
                       "that is a catalog item among the results (left out by default)")
    query.add_argument("--grid", metavar="PNG", help="also write the results as a PNG grid")
    query.add_argument("--html", metavar="HTML", help="also write a static HTML page")
    query.add_argument("--json", action="store_true", help="print the results as JSON")
    query.add_argument("--device", help="torch device (default: the API's choice)")

    serve = commands.add_parser("serve", help="a search page on localhost")
    serve.add_argument("--index", required=True, help="an index folder")
    serve.add_argument("--checkpoint", help="the index's checkpoint (default: the path the "
                       "index recorded)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default "
                       "127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any "
                       "free one, printed)")
    serve.add_argument("--backend", choices=BACKENDS, default="exact")
    serve.add_argument("--device", help="torch device (default: the API's choice)")
    return main


def load_model(checkpoint, device):
    from mmf_fashionvil.inference import load

    try:
        return load(checkpoint, device=device)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise SearchError(f"--checkpoint {checkpoint} cannot be loaded: {e}") from None


def _open_index(args):
    index = SearchIndex(args.index)
    checkpoint = os.path.abspath(args.checkpoint or index.meta.get("checkpoint") or "")
    api = load_model(checkpoint, args.device)
    index.check_model(api, checkpoint)
    return index, api


def command_index(args):
    checkpoint = os.path.abspath(args.checkpoint)
    api = load_model(checkpoint, args.device)
    if args.images:
        source, items = folder_items(args.images)
    else:  # the split as the checkpoint's run read it (e.g. a dev split as val)
        source, items = fashiongen_items(args.data_dir, args.split, api.config)
    try:
        summary = build_index(api, source, items, args.out, checkpoint,
                              batch_size=args.batch_size, chunk_size=args.chunk_size)
    except KeyboardInterrupt:
        print(f"interrupted: what was embedded is kept in {os.path.abspath(args.out)}; "
              "re-run the same command to continue", file=sys.stderr)
        return 130
    skipped = summary["skipped"]
    print(f"index {os.path.abspath(args.out)}: {summary['count']} items ({summary['embedded']} "
          f"embedded now, {summary['reused']} already embedded, {len(skipped)} unreadable "
          f"skipped" + (f", {summary['dropped']} no longer in the catalog left out"
                        if summary["dropped"] else "") + ")")
    for path in skipped:
        print(f"  skipped: {path}")
    if summary["count"] == 0:
        raise SearchError("no image could be embedded")
    return 0


def command_query(args):
    clean_text(args.text, "the query text" if args.image is None else "the modification text")
    index, api = _open_index(args)
    answer = run_query(api, index, args.text, reference=args.image, top_k=args.top_k,
                       backend=args.backend, include_reference=args.include_reference)
    if answer["note"]:
        print(answer["note"], file=sys.stderr)
    if args.json:
        print(json.dumps(answer, indent=1))
    else:
        print(format_results(answer))
    if args.grid:
        from mmf_fashionvil.tools.search.render import write_grid

        write_grid(answer, args.grid)
        print(f"wrote {args.grid}", file=sys.stderr)
    if args.html:
        from mmf_fashionvil.tools.search.render import write_html

        write_html(answer, args.html)
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def command_serve(args):
    from mmf_fashionvil.tools.search.serve import serve

    index, api = _open_index(args)
    serve(api, index, args.host, args.port, args.backend,
          announce=lambda line: print(line, flush=True))
    return 0


def main(argv=None):
    args = parser().parse_args(argv)
    command = {"index": command_index, "query": command_query, "serve": command_serve}
    try:
        return command[args.command](args)
    except SearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
