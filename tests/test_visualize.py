"""python -m mmf_fashionvil.tools.visualize: the ranking the grids show (the evaluation's,
ties against the query), the series the curves plot, the pictures of a tiny trained XMR run,
and errors naming the bad input."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import MMF_RUN, read_jsonl, run_command, short_run_args

from mmf_fashionvil.tools.visualize import VisualizeError
from mmf_fashionvil.tools.visualize.cli import OUTPUTS, find_checkpoint, main
from mmf_fashionvil.tools.visualize.curves import (
    EVAL_REQUIRED,
    TRAIN_REQUIRED,
    curves_figure,
    read_log,
    training_series,
)
from mmf_fashionvil.tools.visualize.ranking import (
    grid_rows,
    pessimistic_order,
    query_ranks,
    read_split,
)

XMR_TINY = "projects/fashionvil/configs/finetuning/xmr_tiny.yaml"
UPDATES = 4
PNG_MIN_SIDE = 300  # pixels: every picture is at least this wide and high
PNG_MIN_STD = 10.0  # grey levels: a picture of one colour has 0


# ------------------------------------------------------------------------------ ranking
def test_pessimistic_order_on_a_hand_made_score_matrix_with_ties():
    scores = torch.tensor([
        [0.5, 0.9, 0.5, 0.1],   # correct 0 ties with wrong 2: 2 goes first
        [0.7, 0.7, 0.7, 0.7],   # all tied, correct 3: every wrong one before it
        [0.2, 0.8, 0.8, 0.3],   # two correct tied at the top (1, 2): index order
        [0.4, 0.1, 0.4, 0.4],   # correct 0 and 2 tie with wrong 3
    ])
    positive = torch.tensor([
        [True, False, False, False],
        [False, False, False, True],
        [False, True, True, False],
        [True, False, True, False],
    ])
    order = pessimistic_order(scores, positive)
    assert order.tolist() == [[1, 2, 0, 3], [0, 1, 2, 3], [1, 2, 3, 0], [3, 0, 2, 1]]
    assert query_ranks(scores, positive).tolist() == [2, 3, 0, 1]
    rows = grid_rows(scores[[0, 3]], positive[[0, 3]], [0, 3], k=2)
    assert [row["query"] for row in rows] == [0, 3]
    assert [row["rank"] for row in rows] == [2, 1]
    assert [[c["candidate"] for c in row["top"]] for row in rows] == [[1, 2], [3, 0]]
    assert [[c["correct"] for c in row["top"]] for row in rows] == [[False, False],
                                                                   [False, True]]
    assert rows[1]["top"][0]["score"] == pytest.approx(0.4)


def test_the_first_correct_candidate_sits_at_the_evaluations_rank():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (200, 12), generator=generator).float()  # many ties
    positive = torch.rand(200, 12, generator=generator) < 0.2
    positive[torch.arange(200), torch.randint(0, 12, (200,), generator=generator)] = True
    order = pessimistic_order(scores, positive)
    first_correct = positive.gather(1, order).int().argmax(dim=1)
    assert torch.equal(first_correct, query_ranks(scores, positive))
    # Best first: scores never rise along the order.
    assert (scores.gather(1, order).diff(dim=1) <= 0).all()


def test_pessimistic_order_rejects_nan_and_mismatched_shapes():
    with pytest.raises(ValueError, match="NaN"):
        pessimistic_order(torch.tensor([[float("nan"), 1.0]]), torch.tensor([[True, False]]))
    with pytest.raises(ValueError, match="differ in shape"):
        pessimistic_order(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.bool))


# ------------------------------------------------------------------------------- curves
TRAIN_LOG = [
    {"update": 10, "loss": 2.0, "losses": {"train/x/itc": 2.0}, "lr": 1e-4,
     "task_losses": {"itc": 2.5, "mlm": 1.5}},
    {"update": 20, "loss": 1.5, "lr": 2e-4, "task_losses": {"itc": 1.5}},
    {"update": 30, "loss": 1.0, "lr": 1.5e-4},
]
EVAL_LOG = [
    {"split": "val", "update": 10, "metrics": {"val/d/m/general/itr_r@1": 5.0,
                                               "val/d/m/general/tir_r@1": 6.0,
                                               "val/d/accuracy": 50.0}, "losses": {}},
    {"split": "val", "update": 30, "metrics": {"val/d/m/general/itr_r@1": 15.0,
                                               "val/d/m/general/tir_r@1": 16.0}, "losses": {}},
    {"split": "test", "update": None, "metrics": {"test/d/m/general/itr_r@1": 99.0},
     "losses": {}},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def test_training_series_are_the_logs_values(tmp_path):
    train = read_log(write_jsonl(tmp_path / "train_log.jsonl", TRAIN_LOG), TRAIN_REQUIRED)
    evals = read_log(write_jsonl(tmp_path / "eval_log.jsonl", EVAL_LOG), EVAL_REQUIRED)
    assert training_series(train, evals) == {
        "loss": {"total": ([10, 20, 30], [2.0, 1.5, 1.0])},
        "task_loss": {"itc": ([10, 20], [2.5, 1.5]), "mlm": ([10], [1.5])},
        "lr": {"lr": ([10, 20, 30], [1e-4, 2e-4, 1.5e-4])},
        "recall": {"val/d/m/general/itr_r@1": ([10, 30], [5.0, 15.0]),
                   "val/d/m/general/tir_r@1": ([10, 30], [6.0, 16.0])},
    }
    figure, notes = curves_figure(training_series(train, evals))
    assert notes == [] and len(figure.axes) == 4


def test_curves_without_an_eval_log_or_task_losses(tmp_path):
    records = [{k: v for k, v in r.items() if k != "task_losses"} for r in TRAIN_LOG]
    series = training_series(records, None)
    assert series["task_loss"] == {} and series["recall"] == {}
    figure, notes = curves_figure(series)
    assert len(figure.axes) == 2  # loss and lr
    assert any("task_losses" in note for note in notes)
    assert any("R@K" in note for note in notes)
    path = tmp_path / "curves.png"
    figure.savefig(path, dpi=60)
    assert_picture(path, min_side=100)


def test_read_log_names_the_file_and_line(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text(json.dumps({"update": 2, "loss": 1.0}) + "\n{not json\n")
    with pytest.raises(VisualizeError, match=r"train_log.jsonl, line 2: not JSON"):
        read_log(str(path), TRAIN_REQUIRED)
    path.write_text(json.dumps({"loss": 1.0}) + "\n")
    with pytest.raises(VisualizeError, match=r"line 1: the record lacks \['update'\]"):
        read_log(str(path), TRAIN_REQUIRED)


# -------------------------------------------------------------------- a tiny trained run
@pytest.fixture(scope="module")
def trained_run(tiny_catalog, tmp_path_factory):
    """A tiny XMR run of 4 updates with an evaluation every 2: (save dir, catalog)."""
    save_dir = tmp_path_factory.mktemp("visualize") / "xmr"
    code, output = run_command([
        MMF_RUN, f"config={XMR_TINY}",
        *short_run_args("fashiongen", UPDATES, evaluation_interval=2, checkpoint_interval=2),
        f"env.data_dir={tiny_catalog}", f"env.save_dir={save_dir}"])
    assert code == 0, output[-4000:]
    return str(save_dir), tiny_catalog


def assert_picture(path, min_side=PNG_MIN_SIDE):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_side, (path, image.size)
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > PNG_MIN_STD, f"{path} is (nearly) one colour"


def independent_top1(query_embeddings, candidate_embeddings, correct):
    """Each query's first candidate by score, wrong candidates first among equal scores."""
    scores = (query_embeddings @ candidate_embeddings.t()).tolist()
    return [min(range(len(row)), key=lambda c: (-row[c], correct(q, c), c))
            for q, row in enumerate(scores)]


def test_the_tool_draws_the_evaluations_ranking_and_the_logs(trained_run, tmp_path):
    save_dir, catalog = trained_run
    out = tmp_path / "pictures"
    code, output = run_command([sys.executable, "-m", "mmf_fashionvil.tools.visualize",
                                "--save-dir", save_dir, "--data-dir", catalog, "--out", str(out),
                                "--queries", "3", "--seed", "1"], timeout=900)
    assert code == 0, output[-4000:]
    for name in OUTPUTS.values():
        assert os.path.join(str(out), name) in output.splitlines(), output[-2000:]
        if name.endswith(".png"):
            assert_picture(out / name)
    report = json.loads((out / OUTPUTS["report"]).read_text())
    assert report["checkpoint"] == os.path.join(save_dir, "best.ckpt")
    assert len(report["text_to_image"]) == len(report["image_to_text"]) == 3

    # The embeddings again, of the val file read here, through the API.
    from mmf_fashionvil.inference import load

    api = load(report["checkpoint"])
    root = os.path.join(catalog, "datasets", "FashionGen")
    products = json.loads(open(os.path.join(root, "val_info.json")).read())
    item_product = [p for p, product in enumerate(products) for _ in product["images"]]
    paths = [os.path.join(root, "val", image) for product in products for image in product["images"]]
    from mmf_fashionvil.data.captions import entry_text

    images = api.encode_images(paths).float().cpu()
    texts = api.encode_texts([entry_text(product) for product in products]).float().cpu()
    assert (report["num_images"], report["num_texts"]) == (len(paths), len(products))

    tir_top1 = independent_top1(texts, images, lambda q, c: item_product[c] == q)
    for row in report["text_to_image"]:
        top = row["top"][0]
        assert top["candidate"] == tir_top1[row["query"]]
        assert top["correct"] == (item_product[top["candidate"]] == row["query"])
        assert top["score"] == pytest.approx(float(texts[row["query"]] @ images[top["candidate"]]),
                                             abs=1e-4)
        assert row["caption"] == entry_text(products[row["query"]])
    itr_top1 = independent_top1(images, texts, lambda q, c: item_product[q] == c)
    for row in report["image_to_text"]:
        assert row["top"][0]["candidate"] == itr_top1[row["query"]]
        assert row["image"] == paths[row["query"]]

    # R@K of these embeddings = the evaluation of the same weights in eval_log.jsonl.
    best_update = torch.load(report["checkpoint"], weights_only=False)["update"]
    (evaluation,) = [r for r in read_jsonl(os.path.join(save_dir, "eval_log.jsonl"))
                     if r["split"] == "val" and r["update"] == best_update]
    prefix = "val/fashiongen/fashionvil_retrieval/general/"
    assert report["recall"] == pytest.approx(
        {key: evaluation["metrics"][prefix + key] for key in report["recall"]}, abs=1e-3)

    # The curves' data are the logs' values.
    train_records = read_jsonl(os.path.join(save_dir, "train_log.jsonl"))
    series = training_series(train_records, read_jsonl(os.path.join(save_dir, "eval_log.jsonl")))
    assert series["loss"]["total"] == ([r["update"] for r in train_records],
                                      [r["loss"] for r in train_records])
    assert series["recall"][prefix + "itr_r@1"][0] == [2, 4]


def test_a_run_without_eval_log_or_task_losses(trained_run, tmp_path, capsys):
    save_dir, catalog = trained_run
    bare = tmp_path / "bare_run"
    bare.mkdir()
    records = read_jsonl(os.path.join(save_dir, "train_log.jsonl"))
    write_jsonl(bare / "train_log.jsonl",
                [{k: v for k, v in r.items() if k != "task_losses"} for r in records])
    out = tmp_path / "pictures"
    main(["--save-dir", str(bare), "--data-dir", catalog, "--out", str(out), "--queries", "2",
          "--checkpoint", os.path.join(save_dir, "current.ckpt")])
    printed = capsys.readouterr().out
    assert f"{bare}/eval_log.jsonl does not exist: R@K panel left out" in printed
    assert "no task_losses in the train log" in printed
    for name in OUTPUTS.values():
        assert (out / name).is_file()
    assert_picture(out / OUTPUTS["curves"])


# ---------------------------------------------------------------------------- bad input
def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_input_names_the_file(trained_run, tmp_path, capsys):
    save_dir, catalog = trained_run
    missing = str(tmp_path / "nowhere")
    err = run_main(["--save-dir", missing, "--data-dir", catalog], capsys)
    assert f"save dir {missing} does not exist" in err
    err = run_main(["--save-dir", save_dir, "--data-dir", missing], capsys)
    assert f"data dir {missing} does not exist" in err

    empty = tmp_path / "empty_run"
    empty.mkdir()
    err = run_main(["--save-dir", str(empty), "--data-dir", catalog], capsys)
    assert f"{empty}/train_log.jsonl does not exist" in err

    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    write_jsonl(no_checkpoint / "train_log.jsonl", TRAIN_LOG)
    err = run_main(["--save-dir", str(no_checkpoint), "--data-dir", catalog], capsys)
    assert f"neither {no_checkpoint}/best.ckpt nor {no_checkpoint}/current.ckpt" in err
    err = run_main(["--save-dir", save_dir, "--data-dir", catalog,
                    "--checkpoint", missing + ".ckpt"], capsys)
    assert f"checkpoint {missing}.ckpt does not exist" in err

    (no_checkpoint / "best.ckpt").write_text("not a checkpoint\n")
    err = run_main(["--save-dir", str(no_checkpoint), "--data-dir", catalog], capsys)
    assert f"cannot load checkpoint {no_checkpoint}/best.ckpt" in err

    bad_log = tmp_path / "bad_log"
    bad_log.mkdir()
    (bad_log / "train_log.jsonl").write_text('{"update": 1}\n[1, 2]\n')
    err = run_main(["--save-dir", str(bad_log), "--data-dir", catalog], capsys)
    assert f"{bad_log}/train_log.jsonl, line 2: expected a JSON object" in err

    assert find_checkpoint(save_dir) == os.path.join(save_dir, "best.ckpt")


def test_a_data_dir_without_the_split_names_what_is_missing(tmp_path):
    with pytest.raises(VisualizeError, match=f"{tmp_path}/datasets/FashionGen does not exist"):
        read_split(str(tmp_path), "val")
    (tmp_path / "datasets" / "FashionGen").mkdir(parents=True)
    with pytest.raises(VisualizeError, match=r"FashionGen/val_info.json' does not exist"):
        read_split(str(tmp_path), "val")
    with pytest.raises(VisualizeError, match=r"--split dev"):
        read_split(str(tmp_path), "dev")
