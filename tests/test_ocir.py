"""Outfit complementary item retrieval (OCIR) on PolyvoreOutfits: the polyvore_ocir dataset
(hand-written files, errors, sparse -> dense categories), the model's CSA-Net-style branch,
and one short mmf_run train -> save -> run_type=test round trip."""
import json
import os

import mmf  # noqa: F401  (compat must patch rc10 before our data modules import it)
import pytest
import torch
from mmf.common.registry import registry
from mmf.common.sample import Sample, SampleList
from omegaconf import OmegaConf

from mmf_fashionvil.data.base import DataError
from mmf_fashionvil.data.polyvore.builder import PolyvoreOCIRBuilder
from mmf_fashionvil.data.polyvore.dataset import NUM_CATEGORIES_KEY
from mmf_fashionvil.data.processors import FASHION_MEAN, FASHION_STD
from mmf_fashionvil.modeling.losses import OutfitItemRetrievalLoss
from mmf_fashionvil.metrics.query_gallery import OutfitComplementaryRetrieval
from mmf_fashionvil.tools.benchmarks.downstream import ocir_chance

from helpers import (
    MMF_RUN,
    apply_image_size_and_overrides,
    build_model,
    read_jsonl,
    run_command,
    short_run_args,
    tiny_config,
)

# Hand-written catalog: item -> (sparse category_id, red channel that identifies its image).
ITEMS = {
    "101": (4518, 20), "102": (3, 40), "103": (27, 60), "104": (3, 80),
    "105": (27, 100), "106": (4518, 120), "107": (3, 140),
}
# Distinct category_ids of the whole metadata sorted ascending (999 belongs to an item no
# entry uses; it still takes a dense index): 3 -> 0, 27 -> 1, 999 -> 2, 4518 -> 3.
DENSE = {3: 0, 27: 1, 999: 2, 4518: 3}
TRAIN = [{"question": ["101", "102"], "blank": "103"},
         {"question": ["103", "104", "101"], "blank": "102"}]
TEST = [{"question": ["105", "106"], "blank": "107", "fake_data": True},
        {"question": [106], "blank": "105"}]  # an integer id is read as its string
IMAGE_SIZE = 32


def write_catalog(root, metadata=None, train=TRAIN, test=TEST, images=ITEMS):
    from PIL import Image

    folder = root / "datasets" / "PolyvoreOutfits"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    if metadata is None:
        metadata = {item: {"category_id": category, "title": f"item {item}",
                           "description": "a red dress"} for item, (category, _) in ITEMS.items()}
        metadata["900"] = {"category_id": 999, "title": "unused"}
        metadata["901"] = {"title": "no category, unused"}
    (folder / "polyvore_item_metadata.json").write_text(json.dumps(metadata))
    for name, entries in (("train", train), ("test", test)):
        (folder / f"ocir_disjoint_{name}.json").write_text(json.dumps(entries))
    for item in images:
        red = ITEMS[item][1]
        Image.new("RGB", (40, 40), (red, 128, 200)).save(folder / "images" / f"{item}.jpg",
                                                        quality=100)
    return folder


def ocir_config(data_dir, **overrides):
    config = OmegaConf.load(PolyvoreOCIRBuilder.config_path()).dataset_config.polyvore_ocir
    config.data_dir = str(data_dir)
    config.max_items = 3
    return apply_image_size_and_overrides(config, IMAGE_SIZE, IMAGE_SIZE, overrides)


def load(config, split):
    # rc10 reuses a dataset's processors from the registry once built: build them afresh.
    for key in config.processors:
        registry.unregister(f"polyvore_ocir_{key}")
    return PolyvoreOCIRBuilder().load_dataset(config, split)


def red_of(image):
    """Undoes the normalisation of a solid-colour image: its red channel value (0-255)."""
    return round(float(image[0].mean() * FASHION_STD[0] + FASHION_MEAN[0]) * 255)


@pytest.fixture
def catalog(tmp_path):
    write_catalog(tmp_path)
    return tmp_path


def test_sparse_category_ids_get_dense_sorted_indices(catalog):
    train = load(ocir_config(catalog), "train")
    assert train.category_index == DENSE
    assert train.num_categories == 4


def test_train_items_follow_the_file(catalog):
    train = load(ocir_config(catalog), "train")
    assert len(train) == len(TRAIN)
    for index, entry in enumerate(TRAIN):
        sample = train[index]
        question = entry["question"]
        assert sample.outfit_mask.tolist() == [1] * len(question) + [0] * (3 - len(question))
        assert sample.outfit_categories[: len(question)].tolist() == [
            DENSE[ITEMS[i][0]] for i in question]
        for slot, item in enumerate(question):
            assert abs(red_of(sample.outfit_images[slot]) - ITEMS[item][1]) <= 3
        assert sample.outfit_images[len(question):].abs().sum() == 0
        assert bool(sample.has_item)
        assert abs(red_of(sample.item_image) - ITEMS[entry["blank"]][1]) <= 3
        assert int(sample.category) == DENSE[ITEMS[entry["blank"]][0]]
        assert not bool(sample.is_query)


def test_eval_rows_are_one_query_per_entry_then_every_item_of_the_split(catalog):
    test = load(ocir_config(catalog), "test")
    rows = [test[i] for i in range(len(test))]
    split_items = ["105", "106", "107"]  # every item named by the test entries
    assert len(rows) == len(TEST) + len(split_items)
    queries, candidates = rows[: len(TEST)], rows[len(TEST):]
    candidate_of = {}  # item_id -> (red, category)
    for row in candidates:
        assert not bool(row.is_query) and bool(row.has_item) and row.outfit_mask.sum() == 0
        candidate_of[int(row.item_id)] = (red_of(row.item_image), int(row.category))
    assert sorted(round(red / 20) for red, _ in candidate_of.values()) == [5, 6, 7]
    for entry, query in zip(TEST, queries):
        assert bool(query.is_query) and not bool(query.has_item) and int(query.item_id) == -1
        blank = entry["blank"]
        red, category = candidate_of[int(query.target_id)]  # the blank is a candidate
        assert abs(red - ITEMS[blank][1]) <= 3
        assert category == int(query.category) == DENSE[ITEMS[blank][0]]
        assert int(query.outfit_mask.sum()) == len(entry["question"])


def test_long_outfits_keep_their_first_items(catalog):
    train = load(ocir_config(catalog, max_items=2), "train")
    sample = train[1]  # question 103, 104, 101
    assert sample.outfit_mask.tolist() == [1, 1]
    assert [round(red_of(image) / 20) for image in sample.outfit_images] == [3, 4]


def test_texts_are_tokenised_per_item_when_asked(catalog, tiny_catalog):
    vocab = os.path.join(tiny_catalog, "vocab", "vocab.txt")
    config = ocir_config(catalog, use_text=True, **{
        "processors.text_processor.params.vocab": vocab,
        "processors.text_processor.params.max_seq_length": 12})
    sample = load(config, "train")[0]
    assert sample.outfit_input_ids.shape == (3, 12) and sample.item_input_ids.shape == (12,)
    assert sample.outfit_input_mask[:2].sum(1).min() > 2 and sample.outfit_input_mask[2].sum() == 0


def _metadata(**changes):
    metadata = {item: {"category_id": category, "title": "t"}
                for item, (category, _) in ITEMS.items()}
    metadata.update(changes)
    return metadata


@pytest.mark.parametrize(
    "kwargs, names, message",
    [
        ({"train": {"question": []}}, "ocir_disjoint_train.json", "non-empty JSON list"),
        ({"train": [{"question": ["101"]}]}, "ocir_disjoint_train.json",
         r"entry 0 lacks key\(s\) \['blank'\]"),
        ({"train": [TRAIN[0], {"question": [], "blank": "101"}]}, "ocir_disjoint_train.json",
         "entry 1 has no question items"),
        ({"train": [{"question": ["101", None], "blank": "102"}]}, "ocir_disjoint_train.json",
         "entry 0 has a question item id None"),
        ({"train": [{"question": ["101", "555"], "blank": "102"}]}, "ocir_disjoint_train.json",
         "entry 0 names item 555, which is not in .*polyvore_item_metadata.json"),
        ({"metadata": _metadata(**{"102": {"title": "t"}})}, "ocir_disjoint_train.json",
         "entry 0 names item 102, which has no category_id"),
        ({"metadata": _metadata(**{"102": {"category_id": "shoes"}})},
         "polyvore_item_metadata.json", "item 102 has a non-integer category_id 'shoes'"),
        ({"metadata": ["101"]}, "polyvore_item_metadata.json", "expected a JSON object"),
        ({"images": [i for i in ITEMS if i != "104"]}, "ocir_disjoint_train.json",
         r"entry 1 names item 104, whose image '.*images/104.jpg' does not exist"),
    ],
)
def test_bad_input_names_file_and_entry(tmp_path, kwargs, names, message):
    folder = write_catalog(tmp_path, **kwargs)
    with pytest.raises(DataError, match=message) as error:
        load(ocir_config(tmp_path), "train")
    assert str(folder / names) in str(error.value)


def test_invalid_json_and_unknown_split_are_named(catalog):
    path = catalog / "datasets" / "PolyvoreOutfits" / "ocir_disjoint_test.json"
    path.write_text("[{")
    with pytest.raises(DataError, match="is not valid JSON") as error:
        load(ocir_config(catalog), "test")
    assert str(path) in str(error.value)
    with pytest.raises(DataError, match="split='both'"):
        load(ocir_config(catalog, split="both"), "train")


# ----------------------------------------------------------------------------- model
NUM_CATEGORIES = 4
MAX_ITEMS = 3


def ocir_model(**ocir):
    heads = {"ocir": {"num_categories": NUM_CATEGORIES, **ocir}}
    return build_model(tiny_config(training_tasks=["ocir"], heads=heads))


@pytest.fixture(scope="module")
def model():
    return ocir_model()


def row(outfit=(), outfit_categories=(), item=None, category=0, seed=0, text_length=None):
    """One OCIR row: outfit images from seeds ``outfit`` (padded with noise, which the mask
    must hide), an optional item image from seed ``item``."""
    def image(s):
        return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(s))

    sample = Sample()
    sample.outfit_images = torch.stack([image(s) for s in outfit] + [
        image(1000 + seed + k) for k in range(MAX_ITEMS - len(outfit))])
    sample.outfit_mask = torch.tensor([1] * len(outfit) + [0] * (MAX_ITEMS - len(outfit)))
    sample.outfit_categories = torch.tensor(
        list(outfit_categories) + [seed % NUM_CATEGORIES] * (MAX_ITEMS - len(outfit)))
    sample.item_image = image(item if item is not None else 2000 + seed)
    sample.has_item = torch.tensor(item is not None)
    sample.category = torch.tensor(category)
    if text_length:
        sample.outfit_input_ids = torch.randint(5, 50, (MAX_ITEMS, text_length))
        sample.outfit_input_mask = torch.ones(MAX_ITEMS, text_length, dtype=torch.long)
        sample.item_input_ids = torch.randint(5, 50, (text_length,))
        sample.item_input_mask = torch.ones(text_length, dtype=torch.long)
    return sample


def forward(model, rows):
    with torch.no_grad():
        return model.forward(SampleList(rows))


def test_outputs_have_the_embedding_shape_and_scale(model):
    output = forward(model, [row((1, 2), (0, 1), item=3, category=2),
                             row((4,), (3,), item=5, category=1)])
    scale = float(model.embedding_norm.scale.detach())
    for key in ("outfit_embedding", "item_embedding"):
        assert output[key].shape == (2, 16)
        assert torch.allclose(output[key].norm(dim=1), torch.full((2,), scale), atol=1e-5)


def test_eval_rows_fill_only_their_side_and_match_training_rows(model):
    train_row = row((1, 2), (0, 1), item=3, category=2)
    query = row((1, 2), (0, 1), category=2, seed=7)  # other padding noise
    candidate = row(item=3, category=2)
    other = row((4, 5, 6), (1, 1, 0), item=8, category=3)
    mixed = forward(model, [query, candidate, other])
    alone = forward(model, [train_row])
    assert mixed["item_embedding"][0].abs().sum() == 0  # a query has no item
    assert mixed["outfit_embedding"][1].abs().sum() == 0  # a candidate has no outfit
    # Padding and the rest of the batch do not matter (eval mode).
    assert torch.allclose(mixed["outfit_embedding"][0], alone["outfit_embedding"][0], atol=1e-5)
    assert torch.allclose(mixed["item_embedding"][1], alone["item_embedding"][0], atol=1e-5)


def test_target_category_conditions_the_outfit_and_the_item(model):
    rows = [row((1, 2), (0, 1), item=3, category=c) for c in range(NUM_CATEGORIES)]
    output = forward(model, rows)
    outfits, items = output["outfit_embedding"], output["item_embedding"]
    for a in range(NUM_CATEGORIES):
        for b in range(a + 1, NUM_CATEGORIES):
            assert (outfits[a] - outfits[b]).abs().max() > 1e-4
            assert (items[a] - items[b]).abs().max() > 1e-4
    # The outfit items' own categories matter too (CSA-Net's pairwise subspaces).
    swapped = forward(model, [row((1, 2), (3, 2), item=3, category=0)])
    assert (swapped["outfit_embedding"][0] - outfits[0]).abs().max() > 1e-4


def test_loss_and_gradients_reach_the_head_and_encoder():
    model = ocir_model().train()
    batch = SampleList([row((1, 2), (0, 1), item=3, category=2),
                        row((4,), (3,), item=5, category=1)])
    output = model.forward(batch)
    loss = OutfitItemRetrievalLoss()(batch, output)
    loss.backward()
    assert torch.isfinite(loss)
    for module in (model.ocir_head.masks, model.ocir_head.item_query.weight,
                   model.image_encoder.conv1.weight):
        assert module.grad is not None and module.grad.abs().sum() > 0


def test_text_features_change_the_embeddings_with_use_text():
    model = ocir_model(use_text=True)
    first = row((1, 2), (0, 1), item=3, category=2, text_length=6)
    second = row((1, 2), (0, 1), item=3, category=2, text_length=6)
    second.outfit_input_ids = first.outfit_input_ids.clone()
    second.item_input_ids = (first.item_input_ids + 1) % 50
    output = forward(model, [first, second])
    assert torch.allclose(output["outfit_embedding"][0], output["outfit_embedding"][1], atol=1e-5)
    assert (output["item_embedding"][0] - output["item_embedding"][1]).abs().max() > 1e-4


def test_categories_outside_the_head_are_an_error(model):
    with pytest.raises(ValueError, match="heads.ocir.num_categories=4"):
        forward(model, [row((1,), (0,), item=3, category=NUM_CATEGORIES)])


def test_num_categories_must_match_the_dataset():
    assert not hasattr(build_model(tiny_config(training_tasks=["xmr"])), "ocir_head")
    with pytest.raises(ValueError, match="needs model_config.fashionvil.heads.ocir.num_categories"):
        build_model(tiny_config(training_tasks=["ocir"]))
    registry.register(NUM_CATEGORIES_KEY, 7)
    try:
        with pytest.raises(ValueError, match="num_categories=4 but .* has 7"):
            ocir_model()
        assert build_model(tiny_config(training_tasks=["ocir"])).ocir_head.num_categories == 7
    finally:
        registry.unregister(NUM_CATEGORIES_KEY)


def test_metric_ranks_each_query_within_its_category(model):
    """The branch's outputs feed fashionvil_ocir: over all items, R@1 is 100 exactly when the
    blank outscores the other candidate of its category (the category-1 item is no
    competitor)."""
    metric = OutfitComplementaryRetrieval(ks=(1,))
    rows = [row((1, 2), (0, 1), category=2), row(item=3, category=2), row(item=4, category=2),
            row(item=9, category=1)]
    for index, (is_query, item_id, target) in enumerate([(1, -1, 0), (0, 0, -1), (0, 1, -1),
                                                         (0, 2, -1)]):
        rows[index].is_query = torch.tensor(bool(is_query))
        rows[index].item_id = torch.tensor(item_id)
        rows[index].target_id = torch.tensor(target)
        rows[index].sample_index = torch.tensor(index)
    batch = SampleList(rows)
    output = forward(model, rows)
    values = metric.compute(metric.collect(batch, output))
    scores = output["outfit_embedding"][0] @ output["item_embedding"][1:3].t()
    assert values["all_items/weighted/r@1"] == (100.0 if scores[0] > scores[1] else 0.0)
    # The authors' gallery holds only blank items: here the one blank, a certain hit.
    assert values["blank_items/mean/r@1"] == 100.0


def test_benchmark_chance_of_both_conventions_by_hand(tmp_path):
    """Category 1 holds a1, a2, a3 (blanks a1, a2; two queries), category 2 holds b1, b2
    (blank b1; one query). R@1 by chance: the authors' (1/2 + 1/1) / 2 = 75 %; over all items
    weighted by queries (2 * 1/3 + 1 * 1/2) / 3 = 38.9 %. R@3: every candidate, 100 %."""
    root = tmp_path / "datasets" / "PolyvoreOutfits"
    root.mkdir(parents=True)
    categories = {"a1": 1, "a2": 1, "a3": 1, "b1": 2, "b2": 2}
    (root / "polyvore_item_metadata.json").write_text(json.dumps(
        {item: {"category_id": c} for item, c in categories.items()}))
    (root / "ocir_disjoint_test.json").write_text(json.dumps([
        {"question": ["b1"], "blank": "a1"}, {"question": ["b2"], "blank": "a2"},
        {"question": ["a3"], "blank": "b1"}]))
    assert ocir_chance(str(tmp_path), "disjoint", ks=(1, 3)) == pytest.approx(
        [75.0, 100.0, 100 * (2 / 3 + 1 / 2) / 3, 100.0])


# ----------------------------------------------------------------------------- mmf_run
CONFIG = "projects/fashionvil/configs/finetuning/ocir_disjoint_tiny.yaml"
SHORT_RUN = short_run_args("polyvore_ocir", updates=4)


def test_mmf_run_trains_saves_and_test_run_reproduces_validation(tiny_catalog, tmp_path):
    save_dir = tmp_path / "train"
    code, output = run_command([MMF_RUN, f"config={CONFIG}", *SHORT_RUN,
                                f"env.data_dir={tiny_catalog}", f"env.save_dir={save_dir}"])
    assert code == 0, output[-4000:]
    assert [r["update"] for r in read_jsonl(save_dir / "train_log.jsonl")] == [2, 4]
    val = read_jsonl(save_dir / "eval_log.jsonl")[-1]["metrics"]
    key = "val/polyvore_ocir/fashionvil_ocir/blank_items/mean/r@{}"
    assert 0 <= val[key.format(1)] <= val[key.format(3)] <= val[key.format(5)] <= 100

    code, output = run_command([MMF_RUN, f"config={CONFIG}", *SHORT_RUN, "run_type=test",
                                f"env.data_dir={tiny_catalog}", f"env.save_dir={tmp_path / 'test'}",
                                f"checkpoint.resume_file={save_dir}/best.ckpt"])
    assert code == 0, output[-4000:]
    test = [r for r in read_jsonl(tmp_path / "test" / "eval_log.jsonl") if r["split"] == "test"]
    # val and test read the same OCIR test file, so the saved model must score the same.
    assert {k.split("/", 1)[1]: v for k, v in test[-1]["metrics"].items()} == pytest.approx(
        {k.split("/", 1)[1]: v for k, v in val.items()}, abs=1e-6)
