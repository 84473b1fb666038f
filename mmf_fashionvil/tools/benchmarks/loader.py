"""Images per second of the training loader from image files vs LMDB stores (issue 9), next
to the tiny model's training step throughput measured in the same run.

    python -m mmf_fashionvil.tools.benchmarks.loader [--out bench_out/loader] [--products 300]
        [--image-size 256] [--workers 0 1 2] [--batch-size 32] [--batches 12]
        [--model-updates 30] [--repeats 3] [--drop-caches]

Writes the synthetic catalog's raw FashionGen release (``--image-size`` px, FashionGen's own
256 by default; Gaussian grain added, so that the images have a photo's entropy: see
:func:`add_grain`), prepares it four ways with ``python -m mmf_fashionvil.prepare fashiongen``
(files: PNG; LMDB stores of the PNG bytes (``keep``), of JPEG q95, of raw pixels) and reads
the train split through the trainer's loader (``training.sampling.build_loader``: batches of
MMF SampleLists) with the default 224 px train transform (resize 256, random crop 224, flip)
and text tokenisation, per worker count. Each measurement times ``--batches`` batches after
the first (worker start-up excluded), on one torch thread per process, ``--repeats`` times
interleaved (the table keeps the fastest: the least disturbed by other load), plus the CPU
time per image of the loader without workers (its whole cost, insensitive to other load)
and the train images' size on disk. ``--drop-caches`` drops the page cache before each
measurement (root and a writable /proc/sys/vm/drop_caches; it affects the whole machine),
else the reads are warm. The model figure is ``samples_per_s`` of ``xmr_tiny.yaml`` (64 px,
CPU), trained ``--model-updates`` updates on the files variant by ``mmf_run``.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from mmf_fashionvil.tools.mmf_runs import CONFIGS, markdown_table, mmf_run

VARIANTS = [("files (PNG)", []),
            ("LMDB, PNG bytes (keep)", ["--store", "lmdb", "--encoding", "keep"]),
            ("LMDB, JPEG q95", ["--store", "lmdb", "--encoding", "jpeg"]),
            ("LMDB, raw pixels", ["--store", "lmdb", "--encoding", "raw"])]


def drop_caches():
    """True when the page cache was dropped (root, writable /proc/sys/vm/drop_caches)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def add_grain(raw, sigma=12.0, seed=0):
    """Adds seeded Gaussian noise to the raw FashionGen images: the catalog's flat shapes
    compress ~100x in PNG and decode almost for free; grained, they have a photo's entropy
    (and decoding costs what it costs on real images)."""
    import h5py
    import numpy as np

    generator = np.random.default_rng(seed)
    for name in ("train", "validation"):
        with h5py.File(os.path.join(raw, "fashiongen", f"fashiongen_256_256_{name}.h5"), "r+") as f:
            images = f["input_image"]
            for start in range(0, len(images), 256):
                block = images[start:start + 256].astype(np.float32)
                block += generator.normal(0.0, sigma, block.shape).astype(np.float32)
                images[start:start + 256] = np.clip(np.rint(block), 0, 255).astype(np.uint8)


def store_size(data):
    """MB of the FashionGen train images: the folder's files or the store."""
    root = os.path.join(data, "datasets", "FashionGen")
    folder = next(p for p in (os.path.join(root, "train.lmdb"), os.path.join(root, "train"))
                  if os.path.isdir(p))
    return sum(os.path.getsize(os.path.join(parent, name))
               for parent, _, names in os.walk(folder) for name in names) / 1e6


def prepare(raw, data, options, log_path):
    if os.path.isdir(os.path.join(data, "datasets", "FashionGen")):
        return
    command = [sys.executable, "-m", "mmf_fashionvil.prepare", "fashiongen", "--raw",
               os.path.join(raw, "fashiongen"), "--out", data, *options]
    with open(log_path, "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    shutil.copytree(os.path.join(raw, "vocab"), os.path.join(data, "vocab"), dirs_exist_ok=True)


def loader_rate(data, store, workers, batch_size, batches):
    """(images/s, images, CPU seconds of this process per image) of the FashionGen train
    loader; the CPU time is the whole loading cost only without workers."""
    from omegaconf import OmegaConf

    import mmf_fashionvil.registry  # noqa: F401
    from mmf_fashionvil.data.fashiongen.builder import FashionGenBuilder
    from mmf_fashionvil.training.sampling import build_loader

    config = OmegaConf.load(FashionGenBuilder.config_path()).dataset_config.fashiongen
    config.data_dir = data
    config.image_store = store
    config.processors.text_processor.params.vocab = os.path.join(data, "vocab", "vocab.txt")
    dataset = FashionGenBuilder().load_dataset(config, "train")
    loader = build_loader(dataset, "fashiongen", "train", batch_size, 0, 1, 0, workers, False)
    iterator = iter(loader)
    next(iterator)  # worker start-up
    started, cpu_started, images = time.perf_counter(), time.process_time(), 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        images += batch.image.shape[0]
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    del iterator, loader  # stops the workers
    return images / seconds, images, cpu / images


def model_rate(data, save_dir, updates, batch_size, log_path):
    """Mean samples_per_s of the tiny XMR model's updates (the first interval left out)."""
    if not os.path.isfile(os.path.join(save_dir, "train_log.jsonl")):
        mmf_run([f"config={CONFIGS}/finetuning/xmr_tiny.yaml", "model=fashionvil",
                 "dataset=fashiongen", f"env.data_dir={data}", f"env.save_dir={save_dir}",
                 f"training.max_updates={updates}", f"training.batch_size={batch_size}",
                 "training.num_workers=0", "training.log_interval=5",
                 f"training.evaluation_interval={10 * updates}",
                 f"training.checkpoint_interval={10 * updates}",
                 "scheduler.params.num_warmup_steps=1",
                 f"scheduler.params.num_training_steps={updates}"], log_path)
    with open(os.path.join(save_dir, "train_log.jsonl")) as f:
        rates = [json.loads(line)["samples_per_s"] for line in f][1:]
    return sum(rates) / len(rates)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/loader")
    parser.add_argument("--products", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--model-updates", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements per cell, interleaved; the table keeps the fastest")
    parser.add_argument("--drop-caches", action="store_true",
                        help="drop the page cache before each measurement (root; affects the "
                             "whole machine)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # (DataLoader workers run on one thread anyway)
    out = os.path.abspath(args.out)
    raw = os.path.join(out, "raw")
    if not os.path.isfile(os.path.join(raw, "catalog.json")):
        from mmf_fashionvil.tools.synthetic import generate_catalog

        generate_catalog(raw, seed=0, num_products=args.products, image_size=args.image_size,
                         format="raw")
        add_grain(raw)
    for index, (_, options) in enumerate(VARIANTS):
        prepare(raw, os.path.join(out, f"data_{index}"), options,
                os.path.join(out, f"prepare_{index}.log"))
    rates, cpu, cold = {}, {}, []
    for repeat in range(args.repeats):  # interleaved: a busy spell hits every cell alike
        for index, (name, options) in enumerate(VARIANTS):
            for workers in args.workers:
                cold.append(bool(args.drop_caches) and drop_caches())
                rate, images, cpu_per_image = loader_rate(
                    os.path.join(out, f"data_{index}"), "lmdb" if options else "files",
                    workers, args.batch_size, args.batches)
                print(f"{name}, {workers} workers, run {repeat + 1}: {rate:.0f} images/s "
                      f"({images} images)", flush=True)
                rates[name, workers] = max(rate, rates.get((name, workers), 0.0))
                if workers == 0:
                    cpu[name] = min(cpu_per_image, cpu.get(name, float("inf")))
    results = [[name] + [rates[name, w] for w in args.workers]
               + [1000 * cpu[name] if name in cpu else "-"] for name, _ in VARIANTS]
    sizes = {name: store_size(os.path.join(out, f"data_{index}")) for index, (name, _)
             in enumerate(VARIANTS)}
    for row in results:
        row.append(sizes[row[0]])
    model = model_rate(os.path.join(out, "data_0"), os.path.join(out, "model_run"),
                       args.model_updates, args.batch_size, os.path.join(out, "model_run.log"))
    header = (["image source"] + [f"{w} workers (images/s)" for w in args.workers]
              + ["CPU ms per image (0 workers)", "train images on disk (MB)"])
    print()
    print(markdown_table(header, results))
    caches = ("dropped before each measurement" if cold and all(cold) else
              "warm (--drop-caches drops them, as root)")
    print(f"\nPage cache: {caches}. Tiny model (xmr_tiny, 64 px, batch {args.batch_size}): "
          f"{model:.0f} samples/s per training step.")
    with open(os.path.join(out, "loader.json"), "w") as f:
        json.dump({"args": vars(args), "header": header, "rows": results,
                   "model_samples_per_s": model, "cold": cold}, f, indent=1)


if __name__ == "__main__":
    main()
