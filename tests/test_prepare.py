"""python -m mmf_fashionvil.prepare: the synthetic catalog's raw releases (--format raw) ->
the layout -> mmf_run pre-training and every fine-tune; the prepared files hold what the
generator put in the releases; files and LMDB train alike; an interrupted run leaves nothing
that looks complete and its rerun gives the clean run's output; bad input is named."""
import json
import os
import shutil
import signal
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import (
    MMF_RUN, REPO, TORCHRUN, final_metrics, read_jsonl, run_command, short_run_args,
)

PREPARE = [sys.executable, "-m", "mmf_fashionvil.prepare"]
# (sub-command, raw folder written by --format raw, dataset folder)
RELEASES = [("fashiongen", "fashiongen", "FashionGen"),
            ("fashion200k", "fashion200k", "Fashion200k"),
            ("polyvore", "polyvore_outfits", "PolyvoreOutfits"),
            ("fashioniq", "fashioniq", "FashionIQ")]
SEED, PRODUCTS = 2, 60  # seed 2: the Fashion200k test split has one-word neighbours
ENV = {"PYTHONPATH": REPO}


def prepare(*args):
    return run_command([*PREPARE, *map(str, args)], env=ENV, timeout=300)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from mmf_fashionvil.tools.synthetic import generate_catalog

    return generate_catalog(tmp_path_factory.mktemp("raw") / "raw", seed=SEED,
                            num_products=PRODUCTS, image_size=64, format="raw")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """The same catalog in the layout, written by the generator: what prepare must give."""
    from mmf_fashionvil.tools.synthetic import generate_catalog

    return generate_catalog(tmp_path_factory.mktemp("layout") / "layout", seed=SEED,
                            num_products=PRODUCTS, image_size=64)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    data = tmp_path_factory.mktemp("prepared") / "data"
    outputs = {}
    for command, folder, _ in RELEASES:
        code, output = prepare(command, "--raw", raw / folder, "--out", data)
        assert code == 0, output
        outputs[command] = output
    shutil.copytree(raw / "vocab", data / "vocab")
    return data, outputs


def load(path):
    return json.loads(open(path, encoding="utf-8").read())


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ----------------------------------------------------------------- what prepare writes
def test_fashiongen_products_views_texts_and_categories_are_the_generators(prepared, layout):
    data, outputs = prepared
    names = load(layout / "datasets/FashionGen/categories.json")
    ours = load(data / "datasets/FashionGen/categories.json")
    # ids from the train split's sorted (upper-case) names
    train = load(layout / "datasets/FashionGen/train_info.json")
    assert ours["category"][:len({e["category_id"] for e in train})] == sorted(
        {names["category"][e["category_id"]].upper() for e in train})
    for split in ("train", "val"):
        expected = load(layout / f"datasets/FashionGen/{split}_info.json")
        got = load(data / f"datasets/FashionGen/{split}_info.json")
        assert [e["id"] for e in got] == [e["id"] for e in expected]
        for want, have in zip(expected, got):
            assert (have["title"], have["description"]) == (want["title"], want["description"])
            assert ours["category"][have["category_id"]] == names["category"][want["category_id"]].upper()
            assert ours["subcategory"][have["subcategory_id"]] == \
                names["subcategory"][want["subcategory_id"]].upper()
            assert len(have["images"]) == len(want["images"])
            for mine, theirs in zip(have["images"], want["images"]):
                assert np.array_equal(pixels(data / "datasets/FashionGen" / split / mine),
                                      pixels(layout / "datasets/FashionGen" / split / theirs))
        products, images = len(expected), sum(len(e["images"]) for e in expected)
        assert f"{split}: {products} products, {images} images" in outputs["fashiongen"]


def test_fashion200k_products_are_the_image_folders_with_their_description(prepared, layout):
    data, _ = prepared
    for split in ("train", "test"):
        expected = load(layout / f"datasets/Fashion200k/{split}_info.json")
        got = load(data / f"datasets/Fashion200k/{split}_info.json")
        # label files are per category: products come category by category
        key = sorted((e["id"], e["title"], tuple(e["images"])) for e in expected)
        assert sorted((e["id"], e["title"], tuple(e["images"])) for e in got) == key
        for entry in got:
            for path in entry["images"]:
                assert (data / "datasets/Fashion200k/images" / path).read_bytes() == \
                    (layout / "datasets/Fashion200k/images" / path).read_bytes()


def test_polyvore_ocir_files_ask_every_train_item_and_one_per_test_outfit(prepared, raw):
    data, _ = prepared
    root = data / "datasets/PolyvoreOutfits"
    assert load(root / "polyvore_item_metadata.json") == load(raw / "polyvore_outfits/polyvore_item_metadata.json")
    for version in ("disjoint", "nondisjoint"):
        for split in ("train", "valid", "test"):
            outfits = [[i["item_id"] for i in o["items"]]
                       for o in load(raw / f"polyvore_outfits/{version}/{split}.json")]
            entries = load(root / f"ocir_{version}_{split}.json")
            expected = sum(len(o) for o in outfits) if split == "train" else len(outfits)
            assert len(entries) == expected
            for entry in entries:
                outfit = next(o for o in outfits if entry["blank"] in o
                              and set(entry["question"]) == set(o) - {entry["blank"]})
                assert len(entry["question"]) == len(outfit) - 1
    disjoint_train = {i["item_id"] for o in load(raw / "polyvore_outfits/disjoint/train.json")
                      for i in o["items"]}
    pretraining = load(root / "train_info.json")
    assert {str(e["id"]) for e in pretraining} == disjoint_train
    assert all(e["images"] == [f"{e['id']}.jpg"] for e in pretraining)


def test_fashioniq_files_are_kept_as_they_are(prepared, raw):
    data, _ = prepared
    for name in sorted(os.listdir(raw / "fashioniq/captions")):
        assert load(data / "datasets/FashionIQ/captions" / name) == load(raw / "fashioniq/captions" / name)
    for name in sorted(os.listdir(raw / "fashioniq/image_splits")):
        assert load(data / "datasets/FashionIQ/image_splits" / name) == \
            load(raw / "fashioniq/image_splits" / name)


def test_a_rerun_is_up_to_date_and_another_dataset_is_refused(prepared, raw, tmp_path):
    data, _ = prepared
    before = (data / "datasets/Fashion200k/prepared.json").read_bytes()
    code, output = prepare("fashion200k", "--raw", raw / "fashion200k", "--out", data)
    assert code == 0 and "is up to date" in output, output
    assert (data / "datasets/Fashion200k/prepared.json").read_bytes() == before
    # other options, or a folder not written by prepare: refused, untouched
    code, output = prepare("fashion200k", "--raw", raw / "fashion200k", "--out", data,
                           "--store", "lmdb")
    assert code != 0 and "holds a dataset prepared from other inputs or options" in output
    assert "--overwrite" in output and str(data / "datasets/Fashion200k") in output
    foreign = tmp_path / "foreign"
    (foreign / "datasets/Fashion200k").mkdir(parents=True)
    (foreign / "datasets/Fashion200k/train_info.json").write_text("[]")
    code, output = prepare("fashion200k", "--raw", raw / "fashion200k", "--out", foreign)
    assert code != 0 and "not written by mmf_fashionvil.prepare" in output
    assert (foreign / "datasets/Fashion200k/train_info.json").read_text() == "[]"
    code, output = prepare("fashion200k", "--raw", raw / "fashion200k", "--out", foreign,
                           "--overwrite")
    assert code == 0, output
    assert load(foreign / "datasets/Fashion200k/train_info.json")


# --------------------------------------------------------------------- interruption
KILL_AFTER = """
import os, signal, sys
from mmf_fashionvil.tools.prepare import output
count = [0]
original = output.ImageSink.{method}
def killing(self, *args, **kwargs):
    count[0] += 1
    if count[0] > {after}:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)
output.ImageSink.{method} = killing
from mmf_fashionvil.tools.prepare.cli import main
main(sys.argv[1:])
"""


def tree(root):
    """{relative path: bytes} of the files under root, LMDB stores as {key: value}."""
    from mmf_fashionvil.data.reading import LMDBImageStore

    found = {}
    for folder, folders, names in os.walk(root):
        if folder.endswith(".lmdb"):
            store = LMDBImageStore(folder)
            found[os.path.relpath(folder, root)] = {
                key: store._transaction().get(key.encode()) for key in store.keys()}
            folders[:] = []
            continue
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = open(path, "rb").read()
    return found


@pytest.mark.parametrize("command, method, options", [
    ("fashiongen", "add_pixels", ["--store", "lmdb", "--encoding", "raw"]),
    ("fashion200k", "add_file", []),
])
def test_a_killed_run_leaves_no_dataset_and_its_rerun_equals_a_clean_run(
        raw, tmp_path, command, method, options):
    folder, name = {c: (f, n) for c, f, n in RELEASES}[command]
    arguments = [command, "--raw", str(raw / folder), *options]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    code, output = run_command(
        [sys.executable, "-c", KILL_AFTER.format(method=method, after=20), *arguments,
         "--out", str(killed)], env=ENV)
    assert code == -signal.SIGKILL, output
    datasets = killed / "datasets"
    assert not (datasets / name).exists()  # nothing that looks complete
    assert (datasets / f".{name}.partial").is_dir()
    code, output = prepare(*arguments, "--out", killed)
    assert code == 0, output
    assert sorted(os.listdir(datasets)) == [name]  # the partial folder is gone
    code, output = prepare(*arguments, "--out", clean)
    assert code == 0, output
    assert tree(datasets / name) == tree(clean / "datasets" / name)


# ------------------------------------------------------------------------- mmf_run
def run_ok(config, dataset, data, save_dir, *extra, updates=4):
    code, output = run_command([MMF_RUN, f"config={config}", *short_run_args(dataset, updates),
                                f"env.data_dir={data}", f"env.save_dir={save_dir}", *extra],
                               timeout=900)
    assert code == 0, output[-4000:]
    metrics = final_metrics(save_dir, "val")
    assert metrics and all(np.isfinite(v) for v in metrics.values())
    return metrics


FINETUNING = "projects/fashionvil/configs/finetuning"


@pytest.mark.parametrize("config, dataset", [
    ("projects/fashionvil/configs/pretraining/mvc_tiny.yaml", "fashion_pretraining"),
    (f"{FINETUNING}/xmr_tiny.yaml", "fashiongen"),
    (f"{FINETUNING}/scr_category_tiny.yaml", "fashiongen"),
    (f"{FINETUNING}/tgir_fashioniq_tiny.yaml", "fashioniq"),
    (f"{FINETUNING}/tgir_fashion200k_tiny.yaml", "fashion200k_tgir"),
    (f"{FINETUNING}/ocir_nondisjoint_tiny.yaml", "polyvore_ocir"),
])
def test_mmf_run_trains_and_evaluates_on_the_prepared_releases(prepared, tmp_path, config, dataset):
    data, _ = prepared
    extra = ["dataset_config.fashion_pretraining.attributes_dir=null"] \
        if dataset == "fashion_pretraining" else []
    run_ok(config, dataset, data, tmp_path / "save", *extra)


def test_training_from_files_and_from_lmdb_gives_identical_losses_and_metrics(raw, tmp_path):
    """The same prepared FashionGen once as files, once as a raw-pixel store read by two
    loader workers: the same losses at every update and the same metrics."""
    files, stored = tmp_path / "files", tmp_path / "lmdb"
    for data, options in ((files, []), (stored, ["--store", "lmdb", "--encoding", "raw"])):
        code, output = prepare("fashiongen", "--raw", raw / "fashiongen", "--out", data, *options)
        assert code == 0, output
        shutil.copytree(raw / "vocab", data / "vocab")
    assert not (stored / "datasets/FashionGen/train").exists()  # only the store
    config = f"{FINETUNING}/xmr_tiny.yaml"
    first = run_ok(config, "fashiongen", files, tmp_path / "run_files", updates=6)
    second = run_ok(config, "fashiongen", stored, tmp_path / "run_lmdb",
                    "dataset_config.fashiongen.image_store=lmdb", "training.num_workers=2",
                    updates=6)
    assert first == second
    losses = [[r["loss"] for r in read_jsonl(tmp_path / run / "train_log.jsonl")]
              for run in ("run_files", "run_lmdb")]
    assert len(losses[0]) == 3 and losses[0] == losses[1]
    # Two DDP ranks, each with a loader worker, read the store.
    code, output = run_command(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", MMF_RUN, f"config={config}",
         *short_run_args("fashiongen", 2), "training.num_workers=1",
         "dataset_config.fashiongen.image_store=lmdb", f"env.data_dir={stored}",
         f"env.save_dir={tmp_path / 'run_ddp'}"], timeout=900)
    assert code == 0, output[-4000:]
    assert all(np.isfinite(v) for v in final_metrics(tmp_path / "run_ddp", "val").values())


def test_every_dataset_reads_the_same_items_from_packed_stores(prepared, tmp_path):
    """pack (raw pixels) of the prepared layout; with image_store: lmdb and the image folders
    gone, every dataset's items (train with its seeded augmentation, val) are the files'."""
    import mmf  # noqa: F401  (compat before our data modules)
    import torch
    from mmf_fashionvil.data.fashion200k.builder import Fashion200kTGIRBuilder
    from mmf_fashionvil.data.fashiongen.builder import FashionGenBuilder
    from mmf_fashionvil.data.fashioniq.builder import FashionIQBuilder
    from mmf_fashionvil.data.polyvore.builder import PolyvoreOCIRBuilder
    from mmf_fashionvil.data.pretraining.builder import FashionPretrainingBuilder

    from helpers import build_dataset, catalog_dataset_config

    data, _ = prepared
    packed = tmp_path / "packed"
    shutil.copytree(data, packed)
    code, output = prepare("pack", "--out", packed, "--encoding", "raw")
    assert code == 0, output
    for folder in ("FashionGen/train", "FashionGen/val", "Fashion200k/images",
                   "PolyvoreOutfits/images", "FashionIQ/images"):
        assert f"{packed / 'datasets' / folder}.lmdb:" in output
        shutil.rmtree(packed / "datasets" / folder)
    for builder in (FashionGenBuilder, Fashion200kTGIRBuilder, FashionIQBuilder,
                    PolyvoreOCIRBuilder, FashionPretrainingBuilder):
        extra = {"attributes_dir": None} if builder is FashionPretrainingBuilder else {}
        for split in ("train", "val"):
            files = build_dataset(builder, catalog_dataset_config(builder, data, **extra), split)
            stored = build_dataset(builder, catalog_dataset_config(
                builder, packed, image_store="lmdb", **extra), split)
            assert len(files) == len(stored)
            for index in range(0, len(files), max(1, len(files) // 6)):
                mine, theirs = files[index], stored[index]
                for key, value in mine.items():
                    if torch.is_tensor(value):
                        assert torch.equal(value, theirs[key]), (builder, split, index, key)
