"""Text-guided image retrieval: FashionIQ and Fashion200k datasets read from hand-written
files (ids, texts, images and errors checked against the files), the model's tgir branch,
and fine-tuning + evaluation + a reproducing `run_type=test` through mmf_run."""
import json
import os

import mmf  # noqa: F401  (compat must patch rc10 before our data modules import it)
import pytest
import torch
from PIL import Image

import mmf_fashionvil.modeling.losses  # noqa: F401  (registers the fashionvil_* losses)
from mmf.common.registry import registry
from mmf.common.sample import SampleList
from mmf_fashionvil.data.base import DataError
from mmf_fashionvil.data.fashion200k.builder import Fashion200kTGIRBuilder
from mmf_fashionvil.data.fashion200k.dataset import one_word_neighbours
from mmf_fashionvil.data.fashioniq.builder import FashionIQBuilder
from mmf_fashionvil.data.processors import FASHION_MEAN, FASHION_STD
from mmf_fashionvil.metrics.query_gallery import (
    Fashion200kTextGuidedImageRetrieval,
    TextGuidedImageRetrieval,
)

from helpers import (
    MMF_RUN,
    apply_image_size_and_overrides,
    build_dataset,
    build_model,
    default_dataset_config,
    final_metrics,
    images,
    run_command,
    short_run_args,
    tiny_config,
)

IMAGE_SIDE = 8
WORDS = ["is", "red", "blue", "longer", "shorter", "has", "no", "sleeves", "a", "print",
         "replace", "with", "striped", "dotted", "skirt", "green", "long", "dress", ","]


# ------------------------------------------------------------------------------- helpers
def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))


def colour(number):
    """A solid colour per image number, far apart from the others (identifies an image)."""
    return (20 * number % 256, 255 - 20 * number % 256, 60 * number % 256)


def write_image(path, number):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), colour(number)).save(path)


def image_number(image, numbers):
    """Which of ``numbers`` a processed solid-colour image tensor shows (nearest colour)."""
    pixel = [(image[c].mean() * FASHION_STD[c] + FASHION_MEAN[c]) * 255 for c in range(3)]
    return min(numbers, key=lambda n: sum((p - q) ** 2 for p, q in zip(pixel, colour(n))))


def dataset_config(builder_class, data_dir, **overrides):
    config = default_dataset_config(builder_class)
    config.data_dir = str(data_dir)
    vocab = os.path.join(str(data_dir), "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    config.processors.text_processor.params.vocab = vocab
    config.processors.text_processor.params.max_seq_length = 16
    return apply_image_size_and_overrides(config, IMAGE_SIDE, IMAGE_SIDE, overrides)


def tokens(dataset, text):
    return dataset.text_processor({"text": text})["input_ids"]


def oracle_metric(metric, dataset, query_vector, gallery_vector, size):
    """The metric on one-hot embeddings: each query row at ``query_vector(sample)``, each
    gallery row at ``gallery_vector(sample)``."""
    samples = [dataset[i] for i in range(len(dataset))]
    batch = SampleList(samples)
    composed = torch.zeros(len(samples), size)
    gallery = torch.zeros(len(samples), size)
    for row, sample in enumerate(samples):
        if sample.is_query:
            composed[row, query_vector(sample)] = 1.0
        else:
            gallery[row, gallery_vector(sample)] = 1.0
    output = {"composed_embedding": composed, "image_embedding": gallery}
    return metric.compute(metric.collect(batch, output))


# ------------------------------------------------------------------------------ FashionIQ
# Image numbers (colours) of the asins; D7 is stored as .jpg, the others as .png.
FIQ_IMAGES = {"D1": 1, "D2": 2, "D3": 3, "D4": 4, "D5": 5, "D6": 6, "D7": 7, "S1": 8,
              "S2": 9, "S3": 10, "S4": 11, "S5": 12}
FIQ_FILES = {
    "captions/cap.dress.train.json": [
        {"candidate": "D1", "target": "D2", "captions": ["is red", "is longer"]},
        {"candidate": "D3", "target": "D1", "captions": ["is blue", "has no sleeves"]},
    ],
    "captions/cap.shirt.train.json": [
        {"candidate": "S1", "target": "S2", "captions": ["is blue", "has a print"]},
    ],
    # The authors' val files carry extra keys; they must be ignored.
    "captions/cap.dress.val.json": [
        {"candidate": "D4", "target": "D5", "captions": ["is red", "is shorter"],
         "target_id": 17, "fake_data": False, "garment_class": "dress"},
        {"candidate": "D6", "target": "D4", "captions": ["is blue", "is longer"]},
    ],
    "captions/cap.shirt.val.json": [
        {"candidate": "S3", "target": "S4", "captions": ["has no sleeves", "is red"]},
    ],
    "image_splits/split.dress.val.json": ["D4", "D5", "D6", "D7", "D5"],  # D5 twice
    "image_splits/split.shirt.val.json": ["S3", "S4", "S5"],
}


@pytest.fixture
def fashioniq(tmp_path):
    root = tmp_path / "datasets" / "FashionIQ"
    for name, content in FIQ_FILES.items():
        write_json(str(root / name), content)
    for asin, number in FIQ_IMAGES.items():
        write_image(str(root / "images" / f"{asin}.{'jpg' if asin == 'D7' else 'png'}"), number)
    return tmp_path


def fiq_config(data_dir, **overrides):
    return dataset_config(FashionIQBuilder, data_dir, **{"categories": ["dress", "shirt"],
                                                        **overrides})


def test_fashioniq_train_items_are_the_triplets(fashioniq):
    train = build_dataset(FashionIQBuilder, fiq_config(fashioniq), "train")
    assert len(train) == 3
    numbers = list(FIQ_IMAGES.values())
    # (reference, target, text, category index in dress/shirt/toptee)
    expected = [("D1", "D2", "is red, is longer", 0), ("D3", "D1", "is blue, has no sleeves", 0),
                ("S1", "S2", "is blue, has a print", 1)]
    for index, (reference, target, text, category) in enumerate(expected):
        sample = train[index]
        assert image_number(sample.image, numbers) == FIQ_IMAGES[reference]
        assert image_number(sample.target_image, numbers) == FIQ_IMAGES[target]
        assert torch.equal(sample.input_ids, tokens(train, text))
        assert int(sample.category) == category and int(sample.is_query) == 1
    # One id table: the ids of an asin agree between items.
    assert int(train[1].target_id) == int(train[0].image_id)


def test_fashioniq_eval_rows_are_queries_then_each_categorys_gallery(fashioniq):
    val = build_dataset(FashionIQBuilder, fiq_config(fashioniq), "val")
    ids = {asin: i for i, asin in enumerate(["D4", "D5", "D6", "D7", "S3", "S4", "S5"])}
    # (is_query, image asin, target asin or None, category); D5 listed twice counts once.
    expected = [(1, "D4", "D5", 0), (1, "D6", "D4", 0), (1, "S3", "S4", 1),
                (0, "D4", None, 0), (0, "D5", None, 0), (0, "D6", None, 0), (0, "D7", None, 0),
                (0, "S3", None, 1), (0, "S4", None, 1), (0, "S5", None, 1)]
    assert len(val) == len(expected)
    numbers = list(FIQ_IMAGES.values())
    for index, (is_query, asin, target, category) in enumerate(expected):
        sample = val[index]
        assert "target_image" not in sample
        assert int(sample.is_query) == is_query
        assert int(sample.image_id) == ids[asin]
        assert int(sample.target_id) == (ids[target] if target else -1)
        assert int(sample.category) == category
        assert image_number(sample.image, numbers) == FIQ_IMAGES[asin]
    assert torch.equal(val[0].input_ids, tokens(val, "is red, is shorter"))
    assert torch.equal(val[3].input_ids, tokens(val, ""))  # gallery rows: empty text


def test_fashioniq_categories_keep_their_metric_index_in_a_subset(fashioniq):
    val = build_dataset(FashionIQBuilder, fiq_config(fashioniq, categories=["shirt"]), "val")
    assert len(val) == 1 + 3
    assert {int(val[i].category) for i in range(len(val))} == {1}


@pytest.mark.parametrize("gallery", ["original", "union"])
def test_fashioniq_rows_rank_their_targets_first_with_oracle_embeddings(fashioniq, gallery):
    """One-hot embeddings at the target id / own id: every target must be found first,
    which needs consistent ids, categories and row kinds across the dataset's rows."""
    val = build_dataset(FashionIQBuilder, fiq_config(fashioniq), "val")
    metric = TextGuidedImageRetrieval(gallery=gallery, ks=(1,))
    values = oracle_metric(metric, val, lambda s: int(s.target_id), lambda s: int(s.image_id), 7)
    assert values == {f"{gallery}/dress/r@1": 100.0, f"{gallery}/shirt/r@1": 100.0,
                      f"{gallery}/mean/r@1": 100.0, f"{gallery}/r_mean": 100.0}


def _edit_json(name, edit):
    def apply(root):
        path = os.path.join(root, name)
        with open(path) as f:
            data = json.load(f)
        write_json(path, edit(data))
    return apply


def _remove(name):
    return lambda root: os.remove(os.path.join(root, name))


def _write(name, content):
    return lambda root: write_json(os.path.join(root, name), content)


@pytest.mark.parametrize(
    "change, overrides, message",
    [
        (_write("captions/cap.dress.val.json", "[{oops"),
         {}, r"cap\.dress\.val\.json' is not valid JSON"),
        (_write("captions/cap.dress.val.json", {"candidate": "D4"}),
         {}, r"cap\.dress\.val\.json: expected a non-empty JSON list"),
        (_edit_json("captions/cap.dress.val.json", lambda d: [d[0], {"candidate": "D6"}]),
         {}, r"cap\.dress\.val\.json: entry 1 lacks key\(s\) \['target', 'captions'\]"),
        (_edit_json("captions/cap.shirt.val.json", lambda d: [dict(d[0], captions="is red")]),
         {}, r"cap\.shirt\.val\.json: entry 0: captions must be a list of strings"),
        (_remove("captions/cap.shirt.val.json"), {}, r"cap\.shirt\.val\.json' does not exist"),
        (None, {"categories": ["dress", "pants"]}, "unknown category 'pants'"),
        (_remove("images/D6.png"), {}, r"cap\.dress\.val\.json: entry 1: image D6 has no file"),
        (_remove("images/D7.jpg"), {}, r"split\.dress\.val\.json: entry 3: image D7 has no file"),
        (_write("image_splits/split.dress.val.json", ["D4", "D6", "D7"]), {},
         r"cap\.dress\.val\.json: entry 0: target D5 is not in the dress gallery .*"
         r"split\.dress\.val\.json"),
        (_write("image_splits/split.shirt.val.json", ["S3", 4]), {},
         r"split\.shirt\.val\.json: entry 1 \(4\) is not an asin"),
    ],
)
def test_fashioniq_bad_input_names_file_and_entry(fashioniq, change, overrides, message):
    if change is not None:
        change(str(fashioniq / "datasets" / "FashionIQ"))
    with pytest.raises(DataError, match=message):
        build_dataset(FashionIQBuilder, fiq_config(fashioniq, **overrides), "val")


# ---------------------------------------------------------------------------- Fashion200k
def test_one_word_neighbours_by_hand():
    descriptions = [("red", "dress"), ("blue", "dress"), ("red", "long", "dress"),
                    ("blue", "skirt"), ("dress", "red")]
    assert one_word_neighbours(descriptions) == [[1], [0, 3], [], [1], []]


# Products (title, number of images); images are numbered in file order.
F200K_TRAIN = [("red striped skirt", 2), ("blue striped skirt", 1), ("red dotted skirt", 1),
               ("green long dress", 1)]
F200K_TEST = [("red striped skirt", 1), ("blue striped skirt", 2), ("red dotted skirt", 1),
              ("Red  Striped skirt", 1), ("green long dress", 1)]


@pytest.fixture
def fashion200k(tmp_path):
    root = tmp_path / "datasets" / "Fashion200k"
    number = 0
    for split, products in (("train", F200K_TRAIN), ("test", F200K_TEST)):
        entries = []
        for index, (title, count) in enumerate(products):
            paths = []
            for view in range(count):
                paths.append(f"{split}/{index}_{view}.jpeg")  # in images/
                write_image(str(root / "images" / paths[-1]), number)
                number += 1
            entries.append({"id": 1000 * (split == "test") + index, "images": paths,
                            "title": title, "attributes_id": []})
        write_json(str(root / f"{split}_info.json"), entries)
    return tmp_path


def test_fashion200k_test_queries_then_every_image(fashion200k):
    test = build_dataset(Fashion200kTGIRBuilder,
                         dataset_config(Fashion200kTGIRBuilder, fashion200k), "test")
    # Test images 0..5 (numbers 5..10): descriptions 0 red striped, 1 blue striped,
    # 1, 2 red dotted, 0 (same words in other case), 3 green long dress (no neighbour).
    # Neighbours: 0 -> [1, 2], 1 -> [0], 2 -> [0]; the k-th image of a description takes
    # neighbour k mod n.
    queries = [(0, 1, "replace red with blue"), (1, 0, "replace blue with red"),
               (2, 0, "replace blue with red"), (3, 0, "replace dotted with striped"),
               (4, 2, "replace striped with dotted")]
    descriptions = [0, 1, 1, 2, 0, 3]
    assert len(test) == len(queries) + 6
    for index, (image, target, text) in enumerate(queries):
        sample = test[index]
        assert (int(sample.is_query), int(sample.image_id), int(sample.target_id)) == (
            1, image, target)
        assert torch.equal(sample.input_ids, tokens(test, text))
        assert image_number(sample.image, range(5, 11)) == 5 + image
    for image in range(6):
        sample = test[len(queries) + image]
        assert (int(sample.is_query), int(sample.image_id), int(sample.match_id)) == (
            0, image, descriptions[image])
        assert image_number(sample.image, range(5, 11)) == 5 + image
    metric = Fashion200kTextGuidedImageRetrieval(ks=(1,))
    values = oracle_metric(metric, test, lambda s: int(s.target_id), lambda s: int(s.match_id), 4)
    assert values == {"all/r@1": 100.0, "all/r_mean": 100.0}


def test_fashion200k_train_pairs_are_drawn_per_item_among_one_word_neighbours(fashion200k):
    train = build_dataset(Fashion200kTGIRBuilder,
                          dataset_config(Fashion200kTGIRBuilder, fashion200k), "train")
    # Train images 0, 1 red striped; 2 blue striped; 3 red dotted; 4 (green dress) no query.
    assert len(train) == 4
    allowed = {  # source image -> {target image: text}
        0: {2: "replace red with blue", 3: "replace striped with dotted"},
        1: {2: "replace red with blue", 3: "replace striped with dotted"},
        2: {0: "replace blue with red", 1: "replace blue with red"},
        3: {0: "replace dotted with striped", 1: "replace dotted with striped"},
    }
    for source in range(4):  # item i is train image i
        drawn = set()
        for epoch in range(16):
            train.set_epoch(epoch)
            sample = train[source]
            assert int(sample.image_id) == source
            target = image_number(sample.target_image, range(5))
            assert target in allowed[source]
            assert torch.equal(sample.input_ids, tokens(train, allowed[source][target]))
            assert torch.equal(train[source].target_image, sample.target_image)  # seeded
            drawn.add(target)
        assert drawn == set(allowed[source])  # every neighbour image gets drawn


def test_fashion200k_without_one_word_pairs_is_an_error(fashion200k):
    path = fashion200k / "datasets" / "Fashion200k" / "test_info.json"
    entries = json.loads(path.read_text())
    path.write_text(json.dumps([entries[0], entries[-1]]))
    with pytest.raises(DataError, match=r"test_info\.json: no two descriptions differ"):
        build_dataset(Fashion200kTGIRBuilder, dataset_config(Fashion200kTGIRBuilder, fashion200k),
                      "test")


# ---------------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def model():
    return build_model(tiny_config(training_tasks=["tgir"]))


def tgir_batch(is_query=None, with_target=False, size=4):
    batch = SampleList()
    batch.input_ids = torch.tensor([[2, 11, 12, 3, 0], [2, 13, 3, 0, 0]] * (size // 2))
    batch.input_mask = (batch.input_ids != 0).long()
    batch.image = images(size)
    if with_target:
        batch.target_image = images(size).flip(0)
    if is_query is not None:
        batch.is_query = torch.tensor(is_query)
    return batch


def test_training_batch_gives_composed_and_target_embeddings(model):
    batch = tgir_batch(with_target=True)
    with torch.no_grad():
        output = model.forward(batch)
        assert set(output) == {"composed_embedding", "target_embedding"}
        assert torch.allclose(output["composed_embedding"],
                              model.compose(batch.input_ids, batch.input_mask, batch.image))
        assert torch.allclose(output["target_embedding"],
                              model.encode_image(batch.target_image)[1])
    assert output["composed_embedding"].shape == (4, 16)
    loss = registry.get_loss_class("fashionvil_tgir")()(batch, output)
    assert loss.dim() == 0 and loss > 0


def test_evaluation_rows_get_the_embedding_of_their_kind_and_zeros(model):
    batch = tgir_batch(is_query=[1, 0, 1, 0])
    with torch.no_grad():
        output = model.forward(batch)
        composed = model.compose(batch.input_ids, batch.input_mask, batch.image)
        image = model.encode_image(batch.image)[1]
    assert set(output) == {"composed_embedding", "image_embedding"}
    query = torch.tensor([True, False, True, False])
    gallery = ~query
    assert torch.allclose(output["composed_embedding"][query], composed[query], atol=1e-6)
    assert torch.allclose(output["image_embedding"][gallery], image[gallery], atol=1e-6)
    assert not output["composed_embedding"][gallery].any()
    assert not output["image_embedding"][query].any()
    # No target_embedding on evaluation rows: the TGIR loss skips them.
    assert registry.get_loss_class("fashionvil_tgir")()(batch, output).numel() == 0
    for kinds in ([1, 1, 1, 1], [0, 0, 0, 0]):  # batches of one kind only
        with torch.no_grad():
            output = model.forward(tgir_batch(is_query=kinds))
        assert output["composed_embedding"].shape == output["image_embedding"].shape == (4, 16)
    with pytest.raises(ValueError, match="is_query"):
        model.forward(tgir_batch())


# ---------------------------------------------------------------------------------- mmf_run
TINY = "projects/fashionvil/configs/finetuning/tgir_fashioniq_tiny.yaml"
SHORT_RUN = short_run_args("fashioniq", updates=4)


def test_fashioniq_fine_tuning_and_test_run_of_the_best_model(tiny_catalog, tmp_path):
    train_dir, test_dir = str(tmp_path / "train"), str(tmp_path / "test")
    code, output = run_command([MMF_RUN, f"config={TINY}", *SHORT_RUN,
                                f"env.data_dir={tiny_catalog}", f"env.save_dir={train_dir}"])
    assert code == 0, output[-4000:]
    val = final_metrics(train_dir, "val")
    for gallery, name in (("original", "fashionvil_tgir"), ("union", "fashionvil_tgir_union")):
        for category in ("dress", "shirt", "toptee", "mean"):
            r10, r50 = (val[f"val/fashioniq/{name}/{gallery}/{category}/r@{k}"] for k in (10, 50))
            assert 0 <= r10 <= r50 <= 100
    assert os.path.isfile(os.path.join(train_dir, "best.ckpt"))
    # FashionIQ's test split is its val split: the saved best model must reproduce val.
    code, output = run_command([MMF_RUN, f"config={TINY}", *SHORT_RUN, "run_type=test",
                                f"env.data_dir={tiny_catalog}", f"env.save_dir={test_dir}",
                                f"checkpoint.resume_file={train_dir}/best.ckpt"])
    assert code == 0, output[-4000:]
    test = final_metrics(test_dir, "test")
    assert {k.split("/", 1)[1]: v for k, v in test.items()} == pytest.approx(
        {k.split("/", 1)[1]: v for k, v in val.items()}, abs=1e-6)
