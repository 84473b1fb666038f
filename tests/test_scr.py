"""(Sub)category recognition: FashionGen labels (dense map from the train split), the
single-stream classifier branch of the model, and one mmf_run train -> test round trip."""
import json
import os

import mmf  # noqa: F401  (compat must patch rc10 before our data modules import it)
import pytest
import torch
import torch.nn.functional as F
from mmf.common.registry import registry
from mmf.common.sample import Sample, SampleList
from PIL import Image

import mmf_fashionvil.modeling.losses  # noqa: F401  (registers the fashionvil_* losses)
from mmf_fashionvil.data.base import DataError
from mmf_fashionvil.data.fashiongen.builder import FashionGenBuilder

from helpers import (
    MMF_RUN,
    VOCAB,
    WIDTH,
    build_dataset,
    build_model,
    catalog_dataset_config,
    final_metrics,
    images,
    run_command,
    short_run_args,
    text_batch,
    tiny_config,
)

SCR_TINY = "projects/fashionvil/configs/finetuning/scr_category_tiny.yaml"

# Hand-written products: (id, number of images, category_id, subcategory_id).
TRAIN = [(1, 1, 7, 40), (2, 2, 3, 41), (3, 1, 7, 40), (4, 1, 12, 45)]
VAL = [(5, 2, 12, 41), (6, 1, 3, 45)]
# Classes = sorted ids present in train: categories 3, 7, 12; subcategories 40, 41, 45.
TRAIN_LABELS = {"category": [1, 0, 1, 2], "subcategory": [0, 1, 0, 2]}
# One row per (product, image) in val.
VAL_ITEM_LABELS = {"category": [2, 2, 0], "subcategory": [1, 1, 2]}


def info_entry(product_id, num_images, category_id, subcategory_id, split):
    return {"id": product_id, "title": f"red dress {product_id}", "description": "nice",
            "images": [f"{product_id}_{v}.png" for v in range(num_images)],
            "category_id": category_id, "subcategory_id": subcategory_id}


def write_info(catalog, split, entries):
    root = catalog / "datasets" / "FashionGen"
    (root / split).mkdir(parents=True, exist_ok=True)
    for entry in entries:
        for path in entry["images"]:
            Image.new("RGB", (64, 64), (200, 30, 30)).save(root / split / path)
    path = root / f"{split}_info.json"
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture
def hand_catalog(tmp_path):
    """(catalog dir, train entries, val entries) of the hand-written products."""
    train = [info_entry(*p, "train") for p in TRAIN]
    val = [info_entry(*p, "val") for p in VAL]
    write_info(tmp_path, "train", train)
    write_info(tmp_path, "val", val)
    return tmp_path, train, val


def labelled_config(catalog, vocab_catalog, label, num_classes):
    config = catalog_dataset_config(FashionGenBuilder, catalog, label=label,
                                    num_classes=num_classes)
    config.processors.text_processor.params.vocab = os.path.join(vocab_catalog, "vocab", "vocab.txt")
    return config


# ------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("label", ["category", "subcategory"])
def test_labels_are_dense_indices_of_the_sorted_train_ids(hand_catalog, tiny_catalog, label):
    catalog, _, _ = hand_catalog
    config = labelled_config(catalog, tiny_catalog, label, 3)
    train = build_dataset(FashionGenBuilder, config, "train")
    val = build_dataset(FashionGenBuilder, config, "val")
    assert [int(train[i].targets) for i in range(len(train))] == TRAIN_LABELS[label]
    assert [int(val[i].targets) for i in range(len(val))] == VAL_ITEM_LABELS[label]
    assert train.class_ids == val.class_ids
    # The raw ids stay available next to the dense label.
    raw = {"category": [12, 12, 3], "subcategory": [41, 41, 45]}[label]
    assert [int(getattr(val[i], label)) for i in range(len(val))] == raw


def product_ids(dataset):
    return [product["id"] for product in dataset.database.products]


@pytest.mark.parametrize("label", [None, "subcategory"])
def test_dev_split_holds_train_products_out_as_val_and_keeps_test(hand_catalog, tiny_catalog,
                                                                   label):
    catalog, train_entries, val_entries = hand_catalog
    config = labelled_config(catalog, tiny_catalog, label, 3 if label else None)
    config.dev_split = {"fraction": 0.25, "seed": 0}
    splits = {name: build_dataset(FashionGenBuilder, config, name)
              for name in ("train", "val", "test")}
    dev, kept = product_ids(splits["val"]), product_ids(splits["train"])
    assert len(dev) == 1 and len(kept) == 3 and not set(dev) & set(kept)
    assert sorted(dev + kept) == [entry["id"] for entry in train_entries]
    assert product_ids(splits["test"]) == [entry["id"] for entry in val_entries]
    # Val items: every image of the held-out products, as any evaluation split.
    images = {entry["id"]: len(entry["images"]) for entry in train_entries}
    assert len(splits["val"]) == sum(images[i] for i in dev)
    if label:
        # One class map, from the whole train file: a product keeps its label in any split.
        by_id = dict(zip([entry["id"] for entry in train_entries], TRAIN_LABELS[label]))
        for name in ("train", "val"):
            dataset = splits[name]
            got = [(int(dataset[i].id), int(dataset[i].targets)) for i in range(len(dataset))]
            ids = product_ids(dataset)
            assert all(by_id[ids[index]] == target for index, target in got)
    # Seeded: the same products again; other seeds hold other products out.
    assert product_ids(build_dataset(FashionGenBuilder, config, "val")) == dev
    held_out = set()
    for seed in range(6):
        config.dev_split.seed = seed
        held_out.add(tuple(product_ids(build_dataset(FashionGenBuilder, config, "val"))))
    assert len(held_out) > 1


def test_dev_split_that_empties_a_side_names_the_train_file(hand_catalog, tiny_catalog):
    catalog, _, _ = hand_catalog
    config = labelled_config(catalog, tiny_catalog, None, None)
    config.dev_split = {"fraction": 0.1, "seed": 0}  # 0.4 of a product
    with pytest.raises(DataError, match=r"train_info.json: dev_split.fraction=0.1 of its 4"):
        build_dataset(FashionGenBuilder, config, "val")
    config.dev_split.fraction = 1.0
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        build_dataset(FashionGenBuilder, config, "train")


def test_without_a_label_targets_stay_zero(hand_catalog, tiny_catalog):
    catalog, _, _ = hand_catalog
    config = labelled_config(catalog, tiny_catalog, None, None)
    val = build_dataset(FashionGenBuilder, config, "val")
    assert [int(val[i].targets) for i in range(len(val))] == [0, 0, 0]


def test_val_class_absent_from_train_names_file_and_product(hand_catalog, tiny_catalog):
    catalog, _, val = hand_catalog
    val[1]["category_id"] = 99
    path = write_info(catalog, "val", val)
    config = labelled_config(catalog, tiny_catalog, "category", 3)
    with pytest.raises(DataError, match="product 6 has category_id 99") as error:
        build_dataset(FashionGenBuilder, config, "val")
    assert str(path) in str(error.value)


@pytest.mark.parametrize("split, position", [("train", 2), ("val", 0)])
def test_missing_class_id_names_file_and_product(hand_catalog, tiny_catalog, split, position):
    catalog, train, val = hand_catalog
    entries = {"train": train, "val": val}[split]
    del entries[position]["subcategory_id"]
    path = write_info(catalog, split, entries)
    config = labelled_config(catalog, tiny_catalog, "subcategory", 3)
    product = entries[position]["id"]
    # A val split reads train's classes too, so a bad train file stops both.
    with pytest.raises(DataError, match=f"product {product} has no subcategory_id") as error:
        build_dataset(FashionGenBuilder, config, "val")
    assert str(path) in str(error.value)


@pytest.mark.parametrize("num_classes", [2, 4, None])
def test_class_count_must_match_the_classifier(hand_catalog, tiny_catalog, num_classes):
    catalog, _, _ = hand_catalog
    config = labelled_config(catalog, tiny_catalog, "category", num_classes)
    with pytest.raises(ValueError, match=r"3 distinct category_id .*heads\.scr\.num_classes=3"):
        build_dataset(FashionGenBuilder, config, "train")


def test_unknown_label_is_refused(hand_catalog, tiny_catalog):
    catalog, _, _ = hand_catalog
    config = labelled_config(catalog, tiny_catalog, "colour", 3)
    with pytest.raises(ValueError, match="label='colour'"):
        build_dataset(FashionGenBuilder, config, "train")


def test_tiny_catalog_subcategories_missing_from_train_are_named(tiny_catalog):
    """The 40-product catalog's val split has subcategories its train split lacks."""
    with open(os.path.join(tiny_catalog, "datasets/FashionGen/train_info.json")) as f:
        train_ids = {p["subcategory_id"] for p in json.load(f)}
    with open(os.path.join(tiny_catalog, "datasets/FashionGen/val_info.json")) as f:
        unseen = [p for p in json.load(f) if p["subcategory_id"] not in train_ids]
    assert unseen  # the premise of this test
    config = labelled_config(tiny_catalog, tiny_catalog, "subcategory", len(train_ids))
    with pytest.raises(DataError, match=f"product {unseen[0]['id']} has subcategory_id"):
        build_dataset(FashionGenBuilder, config, "val")


# ------------------------------------------------------------------------------- model
NUM_CLASSES = 5


def scr_batch(targets=(0, 3)):
    input_ids, input_mask = text_batch()
    samples = []
    for row, target in enumerate(targets):
        sample = Sample()
        sample.input_ids, sample.input_mask = input_ids[row], input_mask[row]
        sample.image = images(len(targets))[row]
        sample.targets = torch.tensor(target)
        samples.append(sample)
    batch = SampleList(samples)
    batch.task = "scr"
    return batch


@pytest.fixture(scope="module")
def scr_model():
    return build_model(tiny_config(training_tasks=["scr"],
                                   heads={"scr": {"num_classes": NUM_CLASSES}}))


def test_scr_scores_are_the_mlp_on_the_fusion_encoders_cls(scr_model):
    batch = scr_batch()
    with torch.no_grad():
        scores = scr_model.forward(batch)["scores"]
        # Second route through the public usage modes: FE([w; v]), position 0, the head.
        visual_tokens, _ = scr_model.encode_image(batch["image"])
        cls_output = scr_model.fuse(batch["input_ids"], batch["input_mask"], visual_tokens)[:, 0]
        # The authors' head, written out: BERT's pooler (dense, tanh), BERT's prediction-head
        # transform (dense, GELU, LayerNorm), a linear classifier.
        pooler, (transform, classifier) = scr_model.pooler[0], scr_model.scr_head
        pooled = torch.tanh(cls_output @ pooler.weight.t() + pooler.bias)
        hidden = F.gelu(pooled @ transform.dense.weight.t() + transform.dense.bias)
        hidden = F.layer_norm(hidden, (WIDTH,), transform.LayerNorm.weight,
                              transform.LayerNorm.bias, eps=transform.LayerNorm.eps)
        expected = hidden @ classifier.weight.t() + classifier.bias
    assert scores.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(scores, expected)


def test_scr_scores_depend_on_both_text_and_image(scr_model):
    batch = scr_batch()
    with torch.no_grad():
        scores = scr_model.forward(batch)["scores"]
        other_text = scr_batch()
        other_text.input_ids[0, 1] = (other_text.input_ids[0, 1] + 7) % VOCAB
        other_image = scr_batch()
        other_image.image[0] = torch.flip(other_image.image[0], dims=[1])
        for changed in (other_text, other_image):
            new_scores = scr_model.forward(changed)["scores"]
            assert not torch.allclose(new_scores[0], scores[0])  # the changed row
            torch.testing.assert_close(new_scores[1], scores[1])  # rows stay independent


def test_scr_loss_is_cross_entropy_on_the_targets():
    model = build_model(tiny_config(training_tasks=["scr"],
                                    heads={"scr": {"num_classes": NUM_CLASSES}})).train()
    batch = scr_batch(targets=(4, 1))
    output = model.forward(batch)
    loss = registry.get_loss_class("fashionvil_classification")()(batch, output)
    log_probs = torch.log_softmax(output["scores"].detach().double(), dim=1)
    expected = -(log_probs[0, 4] + log_probs[1, 1]) / 2
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert model.scr_head[1].weight.grad.abs().sum() > 0
    assert model.pooler[0].weight.grad.abs().sum() > 0
    assert model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_scr_head_only_when_trained_and_needs_num_classes():
    model = build_model(tiny_config(training_tasks=["xmr"]))
    assert not hasattr(model, "scr_head")
    with pytest.raises(ValueError, match="task 'scr' has no head"):
        model.forward(scr_batch())
    with pytest.raises(ValueError, match=r"heads\.scr\.num_classes"):
        build_model(tiny_config(training_tasks=["scr"]))


# ------------------------------------------------------------------------------- mmf_run
SHORT_SCR_RUN = short_run_args("fashiongen", updates=4, evaluation_interval=2)


def test_mmf_run_scr_trains_and_best_checkpoint_reproduces_validation(tiny_catalog, tmp_path):
    save_dir, test_dir = tmp_path / "train", tmp_path / "test"
    code, output = run_command([MMF_RUN, f"config={SCR_TINY}", *SHORT_SCR_RUN,
                                f"env.data_dir={tiny_catalog}", f"env.save_dir={save_dir}"])
    assert code == 0, output[-4000:]
    with open(save_dir / "eval_log.jsonl") as f:
        evaluations = [json.loads(line) for line in f]
    accuracy_key = "val/fashiongen/fashionvil_accuracy/accuracy"
    assert [r["update"] for r in evaluations] == [2, 4]
    for record in evaluations:
        assert set(record["metrics"]) == {
            accuracy_key, "val/fashiongen/fashionvil_macro_f1/macro_f1",
            "val/fashiongen/fashionvil_macro_f1/macro_f1_target_classes"}
        assert 0 <= record["metrics"][accuracy_key] <= 100
    best = max(evaluations, key=lambda r: r["metrics"][accuracy_key])  # first of ties
    checkpoint = torch.load(save_dir / "best.ckpt", weights_only=False)
    assert checkpoint["update"] == best["update"]

    code, output = run_command([MMF_RUN, f"config={SCR_TINY}", *SHORT_SCR_RUN, "run_type=test",
                                f"env.data_dir={tiny_catalog}", f"env.save_dir={test_dir}",
                                f"checkpoint.resume_file={save_dir}/best.ckpt"])
    assert code == 0, output[-4000:]
    test = final_metrics(str(test_dir), "test")
    assert {k.split("/", 1)[1]: v for k, v in test.items()} == pytest.approx(
        {k.split("/", 1)[1]: v for k, v in best["metrics"].items()}, abs=1e-6)
