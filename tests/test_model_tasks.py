"""FashionViL pre-training branches (ITM, MLM, MPFC, MVC, PAC): outputs, labels, masks,
hard negatives (also over two gloo ranks), token dropping, frozen tokenizer, gradients."""
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from omegaconf import OmegaConf

import mmf_fashionvil.modeling.losses  # noqa: F401  (registers the fashionvil_* losses)
from mmf.common.registry import registry
from mmf.common.sample import Sample, SampleList
from mmf_fashionvil.modeling.image_tokenizer import load_image_tokenizer, to_tokenizer_input
from mmf_fashionvil.modeling.masking import IGNORE_INDEX, num_masked_patches, whole_word_mask
from mmf_fashionvil.rng import batch_generator
from mmf_fashionvil.data.processors import IMAGE_NORMALIZATION_KEY, TextTokenizer
from mmf_fashionvil.modeling.config import DEFAULTS_YAML
from mmf_fashionvil.modeling.layers import drop_tokens_at_random

from helpers import VOCAB, build_model, free_port, save_tiny_image_tokenizer, tiny_config

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL_IDS = [PAD, UNK, CLS, SEP, MASK]
IMAGE_SIZE = 96  # 3 x 3 grid
NUM_PATCHES = 9
NUM_CODES = 12
NUM_ATTRIBUTES = 5
EMBEDDING_DIM = 16
ALL_TASKS = ["itc", "itm", "mlm", "mpfc", "mvc", "pac"]
# The product of each row: rows 0/1 and 2/3 are two items of the same product.
PRODUCTS = [0, 0, 1, 1, 2, 3]


@pytest.fixture(scope="module")
def tokenizer_checkpoint(make_tokenizer_checkpoint):
    return make_tokenizer_checkpoint(image_size=IMAGE_SIZE, codebook_size=NUM_CODES)


def task_config(tokenizer_checkpoint, **overrides):
    heads = {
        "mpfc": {"num_codes": NUM_CODES, "tokenizer_checkpoint": tokenizer_checkpoint},
        "pac": {"num_attributes": NUM_ATTRIBUTES},
    }
    # No dropout, so that training-mode outputs are deterministic.
    bert = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = tiny_config(training_tasks=ALL_TASKS, heads=heads, bert=bert,
                         image_encoder={"image_size": IMAGE_SIZE})
    return OmegaConf.merge(config, overrides)


@pytest.fixture(scope="module")
def model(tokenizer_checkpoint):
    return build_model(task_config(tokenizer_checkpoint))


def text_of_row(row, product):
    """[CLS] product-word row-word (two-piece word on even rows) [SEP] [PAD]...: token 1
    names the product (10 + p) and token 2 the row (20 + r), so a text can be traced."""
    if row % 2 == 0:
        ids = [CLS, 10 + product, 20 + row, 40 + row % 5, 45, SEP, PAD, PAD]
        words = [-1, 0, 1, 1, 2, -1, -1, -1]
    else:
        ids = [CLS, 10 + product, 20 + row, SEP, PAD, PAD, PAD, PAD]
        words = [-1, 0, 1, -1, -1, -1, -1, -1]
    return torch.tensor(ids), torch.tensor(words)


def pretraining_batch(products=PRODUCTS, task=None, seed=1, first_row=0):
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index, product in enumerate(products):
        sample = Sample()
        sample.input_ids, sample.word_ids = text_of_row(first_row + index, product)
        # MLM inputs as the text processor draws them for each item
        sample.masked_input_ids, sample.lm_label_ids = whole_word_mask(
            sample.input_ids, sample.word_ids, seeded(1000 * seed + index), mask_token_id=MASK,
            vocab_size=VOCAB, special_ids=SPECIAL_IDS)
        sample.input_mask = (sample.input_ids != PAD).long()
        sample.segment_ids = torch.zeros_like(sample.input_ids)
        sample.image = torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        sample.image_view2 = torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        sample.id = torch.tensor(product)
        labels = torch.zeros(NUM_ATTRIBUTES)
        labels[[product % NUM_ATTRIBUTES, (product + 2) % NUM_ATTRIBUTES]] = 1.0
        sample.attribute_labels = labels
        samples.append(sample)
    batch = SampleList(samples)
    if task is not None:
        batch.task = task
    return batch


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def record_calls(monkeypatch, model, method_name):
    """Wraps ``model.<method_name>`` so that each call's arguments are recorded."""
    calls = []
    original = getattr(model, method_name)

    def recording(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, method_name, recording)
    return calls


# ------------------------------------------------------------------ outputs and gradients
EXPECTED_SHAPES = {
    "itm": {"itm_logits": (12, 2), "itm_labels": (12,)},
    "mpfc": {"mpfc_logits": (6, NUM_PATCHES, NUM_CODES), "mpfc_labels": (6, NUM_PATCHES)},
    "mvc": {"composed_embedding": (6, EMBEDDING_DIM), "view_embedding": (6, EMBEDDING_DIM)},
    "pac": {"pac_image_logits": (6, NUM_ATTRIBUTES), "pac_text_logits": (6, NUM_ATTRIBUTES),
            "pac_labels": (6, NUM_ATTRIBUTES)},
}


@pytest.mark.parametrize("task", ["itm", "mpfc", "mvc", "pac"])
def test_output_keys_and_shapes(model, task):
    with torch.no_grad():
        output = model.forward(pretraining_batch(task=task))
    expected = EXPECTED_SHAPES[task]
    assert set(output) == set(expected)
    for key, shape in expected.items():
        assert tuple(output[key].shape) == shape, key


def test_mlm_output_covers_every_text_position(model):
    batch = pretraining_batch(task="mlm")
    with torch.no_grad():
        output = model.forward(batch)
    assert set(output) == {"mlm_logits", "mlm_labels"}
    assert output["mlm_logits"].shape == (*batch["input_ids"].shape, VOCAB)
    assert torch.equal(output["mlm_labels"], batch["lm_label_ids"])
    # masking.py masks at least one word per text
    assert ((output["mlm_labels"] != IGNORE_INDEX).sum(1) >= 1).all()


# Parameters that the task's loss must reach (besides the transformer).
TRAINED_BY = {
    "itm": ["itm_head.weight", "visual_projection.weight", "image_encoder.conv1.weight"],
    "mlm": ["mlm_head.predictions.transform.dense.weight", "embeddings.word_embeddings.weight",
            "visual_projection.weight"],
    "mpfc": ["mpfc_head.1.weight", "visual_projection.weight", "image_encoder.conv1.weight"],
    "mvc": ["image_projection.weight", "embedding_norm.scale", "image_encoder.conv1.weight",
            "embeddings.visual_position_embeddings.weight"],
    "pac": ["pac_head.weight", "pac_head.logit_scale", "text_projection.weight",
            "image_projection.weight"],
}


@pytest.mark.parametrize("task", sorted(TRAINED_BY))
def test_backward_through_the_task_loss(tokenizer_checkpoint, task):
    model = build_model(task_config(tokenizer_checkpoint)).train()
    batch = pretraining_batch(task=task)
    output = model.forward(batch)
    loss = registry.get_loss_class(f"fashionvil_{task}")()(batch, output)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    parameters = dict(model.named_parameters())
    for name in TRAINED_BY[task] + ["encoder.layer.0.attention.self.query.weight"]:
        grad = parameters[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_same_global_seed_same_random_choices(model):
    batch = pretraining_batch(task="mpfc")
    outputs = []
    for _ in range(2):
        torch.manual_seed(11)
        with torch.no_grad():
            outputs.append(model.forward(batch))
    assert torch.equal(outputs[0]["mpfc_labels"], outputs[1]["mpfc_labels"])
    assert torch.equal(outputs[0]["mpfc_logits"], outputs[1]["mpfc_logits"])
    masks = set()
    for seed in range(12, 18):  # and other global seeds other masks
        torch.manual_seed(seed)
        masks.add(tuple(model.mpfc_patch_mask(batch["image"], batch_generator()).flatten().tolist()))
    assert len(masks) > 1


def test_default_task_probabilities_are_the_authors():
    from mmf_fashionvil.tasks import parse_tasks

    defaults = OmegaConf.load(DEFAULTS_YAML).model_config.fashionvil
    tasks, probabilities = parse_tasks(OmegaConf.merge(defaults, {"training_tasks": ALL_TASKS}))
    authors = {"itm": 0.15, "pac": 0.15, "itc": 0.20, "mvc": 0.20, "mlm": 0.15, "mpfc": 0.15}
    assert dict(zip(tasks, probabilities)) == pytest.approx(authors)


# ---------------------------------------------------------------------------------- ITM
def traced_pairs(model, monkeypatch, batch, generator):
    """(ITM output, the texts and visual tokens the fusion encoder was given)."""
    calls = record_calls(monkeypatch, model, "fuse")
    with torch.no_grad():
        output = model.forward_itm(batch, generator)
    (pair_ids, _, pair_visual), = calls
    return output, pair_ids, pair_visual


def test_itm_half_of_the_pairs_are_other_product_negatives(model, monkeypatch):
    batch = pretraining_batch()
    with torch.no_grad():
        visual_tokens, _ = model.encode_image(batch["image"])
    chosen_rows = set()
    for seed in range(20):
        output, pair_ids, pair_visual = traced_pairs(model, monkeypatch, batch, seeded(seed))
        monkeypatch.undo()
        assert output["itm_labels"].tolist() == [1] * 6 + [0] * 6
        assert torch.equal(pair_ids[:6], batch["input_ids"])
        assert torch.equal(pair_visual, torch.cat([visual_tokens, visual_tokens]))
        for image_row, text in enumerate(pair_ids[6:]):
            text_product, text_row = int(text[1]) - 10, int(text[2]) - 20
            assert torch.equal(text, batch["input_ids"][text_row])
            assert text_product != PRODUCTS[image_row]
            chosen_rows.add((image_row, text_row))
    # sampled, not a fixed choice: each image meets several of its 4 or 5 valid texts
    for image_row in range(6):
        assert len({text for image, text in chosen_rows if image == image_row}) >= 2


def test_itm_negatives_follow_the_itc_similarity(tokenizer_checkpoint, monkeypatch):
    """Planted embeddings (an untrained ConvNet embeds all images alike): image i is
    s * e_i and the text of row planted[i] too, every other pair is orthogonal, so the
    sampling probabilities softmax(s^2 cos) put ~1 - 5 e^-100 on the planted text."""
    model = build_model(task_config(tokenizer_checkpoint))
    batch = pretraining_batch()
    scale = 10.0
    planted = [(i + 2) % 6 for i in range(6)]  # another product for every row
    image_embedding = scale * torch.eye(6, EMBEDDING_DIM)
    text_embedding = torch.empty_like(image_embedding)
    text_embedding[planted] = image_embedding
    encode_image, encode_text = model.encode_image, model.encode_text
    monkeypatch.setattr(model, "encode_image",
                        lambda image: (encode_image(image)[0], image_embedding))
    monkeypatch.setattr(model, "encode_text",
                        lambda ids, mask: (encode_text(ids, mask)[0], text_embedding))
    _, pair_ids, _ = traced_pairs(model, monkeypatch, batch, seeded(0))
    assert [int(text[2]) - 20 for text in pair_ids[6:]] == planted


def test_itm_needs_product_ids(model):
    batch = pretraining_batch()
    del batch["id"]
    with pytest.raises(ValueError, match="'id'"):
        model.forward_itm(batch, seeded(0))


ROWS_PER_RANK = (3, 2)
RANK_PRODUCTS = ([0, 1, 2], [2, 3])  # product 2 on both ranks


def _itm_rank_worker(rank, world_size, port, tokenizer_checkpoint, out_dir):
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)  # two processes on a small machine
    try:
        model = build_model(task_config(tokenizer_checkpoint))
        batch = pretraining_batch(RANK_PRODUCTS[rank], seed=rank + 1,
                                  first_row=sum(ROWS_PER_RANK[:rank]))
        negatives = []
        for seed in range(10):
            calls = []
            original = model.fuse
            model.fuse = lambda *args: calls.append(args) or original(*args)
            with torch.no_grad():
                output = model.forward_itm(batch, seeded(seed))
            del model.fuse
            negatives.append(calls[0][0][len(RANK_PRODUCTS[rank]):])
        torch.save({"negatives": torch.stack(negatives), "labels": output["itm_labels"]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_itm_negatives_come_from_every_rank_and_never_the_same_product(
        tokenizer_checkpoint, tmp_path):
    world_size = len(ROWS_PER_RANK)
    mp.spawn(_itm_rank_worker,
             args=(world_size, free_port(), tokenizer_checkpoint, str(tmp_path)),
             nprocs=world_size, join=True)
    all_products = RANK_PRODUCTS[0] + RANK_PRODUCTS[1]
    for rank in range(world_size):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        rows = ROWS_PER_RANK[rank]
        assert result["labels"].tolist() == [1] * rows + [0] * rows
        first_row = sum(ROWS_PER_RANK[:rank])
        text_ranks = set()
        for negatives in result["negatives"]:
            for image_row, text in enumerate(negatives):
                global_row = int(text[2]) - 20
                expected_text, _ = text_of_row(global_row, all_products[global_row])
                assert torch.equal(text, expected_text)
                assert int(text[1]) - 10 != RANK_PRODUCTS[rank][image_row]
                text_ranks.add(0 if global_row < ROWS_PER_RANK[0] else 1)
                assert global_row != first_row + image_row
        assert text_ranks == {0, 1}


# ---------------------------------------------------------------------------------- MLM
def with_masks(batch):
    """The batch plus dataset-made MLM masks: row r's word 0 (the product word) -> [MASK],
    and on even rows also the two-piece word 1 kept as is (labelled, unchanged)."""
    masked = batch["input_ids"].clone()
    labels = torch.full_like(masked, IGNORE_INDEX)
    labels[:, 1] = masked[:, 1]
    masked[:, 1] = MASK
    labels[0::2, 2:4] = masked[0::2, 2:4]
    batch.masked_input_ids, batch.lm_label_ids = masked, labels
    return batch


def test_mlm_uses_the_datasets_masks_and_the_tied_head(model):
    batch = with_masks(pretraining_batch())
    labels = batch["lm_label_ids"]
    with torch.no_grad():
        output = model.forward_mlm(batch)
        visual_tokens, _ = model.encode_image(batch["image"])
        sequence = model.fuse(batch["masked_input_ids"], batch["input_mask"], visual_tokens)
        expected = model.mlm_head(sequence[:, :8])
    masked_rows, masked_columns = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
    assert masked_columns.tolist() == [1, 2, 3, 1, 1, 2, 3, 1, 1, 2, 3, 1]
    assert torch.equal(output["mlm_labels"][masked_rows, masked_columns],
                       batch["input_ids"][masked_rows, masked_columns])
    torch.testing.assert_close(output["mlm_logits"], expected)


def test_mlm_logits_are_tied_to_the_word_embeddings(tokenizer_checkpoint):
    model = build_model(task_config(tokenizer_checkpoint))
    batch = with_masks(pretraining_batch())
    unused = VOCAB - 1  # in no input: the fusion encoder's outputs do not change
    assert not (batch["masked_input_ids"] == unused).any()
    delta = torch.randn(model.bert_config.hidden_size, generator=seeded(4))
    with torch.no_grad():
        before = model.forward_mlm(batch)["mlm_logits"]
        visual_tokens, _ = model.encode_image(batch["image"])
        sequence = model.fuse(batch["masked_input_ids"], batch["input_mask"], visual_tokens)
        transformed = model.mlm_head.predictions.transform(sequence[:, :8])
        model.embeddings.word_embeddings.weight[unused] += delta
        after = model.forward_mlm(batch)["mlm_logits"]
    torch.testing.assert_close(after[..., unused] - before[..., unused], transformed @ delta)
    torch.testing.assert_close(after[..., :unused], before[..., :unused])


TEXT_VOCAB = (["[PAD]"] + [f"tok{i}" for i in range(36)] + ["long", "red", "sleeve", "##s"]
              + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"])
TEXT_SPECIAL_IDS = [0, 41, 42, 43, 44]  # [PAD] [UNK] [CLS] [SEP] [MASK] in TEXT_VOCAB


def mlm_text_processor(tmp_path, vocab=TEXT_VOCAB, mask_prob=0.15):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("".join(f"{token}\n" for token in vocab))
    return TextTokenizer(OmegaConf.create(
        {"vocab": str(vocab_file), "max_seq_length": 16, "mlm_mask_prob": mask_prob}))


def test_mlm_masks_drawn_by_the_text_processor_are_whole_word_and_seeded(tmp_path):
    processor = mlm_text_processor(tmp_path)
    text = "long red sleeves tok1 tok2 tok3 sleeves tok4 tok5 red"

    def draw(seed):
        torch.manual_seed(seed)  # what a dataset does per item
        return processor({"text": text})

    first, again, other = draw(7), draw(7), draw(8)
    assert torch.equal(first["masked_input_ids"], again["masked_input_ids"])
    assert torch.equal(first["lm_label_ids"], again["lm_label_ids"])
    assert not torch.equal(first["lm_label_ids"], other["lm_label_ids"])

    mask_seen, mask_token_id = False, TEXT_VOCAB.index("[MASK]")
    for seed in range(40):
        item = draw(seed)
        input_ids, word_ids = item["input_ids"], item["word_ids"]
        masked, labels = item["masked_input_ids"], item["lm_label_ids"]
        chosen = labels != IGNORE_INDEX
        assert chosen.any()
        assert torch.equal(labels[chosen], input_ids[chosen])
        assert torch.equal(masked[~chosen], input_ids[~chosen])
        assert (word_ids[chosen] >= 0).all()  # special tokens and padding are never chosen
        for word in word_ids.unique().tolist():
            pieces = chosen[word_ids == word]
            assert pieces.all() or not pieces.any()  # whole words only ("sleeve ##s")
        replaced = masked[chosen]
        # the [MASK] id and the special ids are the vocabulary file's
        assert not torch.isin(replaced[replaced != mask_token_id],
                              torch.tensor(TEXT_SPECIAL_IDS)).any()
        mask_seen = mask_seen or bool((replaced == mask_token_id).any())
    assert mask_seen


def test_mlm_missing_inputs_give_clear_errors(model, tmp_path):
    batch = pretraining_batch()
    del batch["masked_input_ids"], batch["lm_label_ids"]
    with pytest.raises(ValueError, match="masked_input_ids.*mlm_mask_prob"):
        model.forward_mlm(batch)
    half = pretraining_batch()
    del half["lm_label_ids"]
    with pytest.raises(ValueError, match="lm_label_ids"):
        model.forward_mlm(half)
    no_mask_token = [token for token in TEXT_VOCAB if token != "[MASK]"]
    with pytest.raises(ValueError, match=r"vocab.txt has no \['\[MASK\]'\] token"):
        mlm_text_processor(tmp_path, vocab=no_mask_token)
    # without MLM masking the processor needs no [MASK]
    assert "masked_input_ids" not in mlm_text_processor(tmp_path, no_mask_token, 0.0)(
        {"text": "red sleeves"})


# --------------------------------------------------------------------------------- MPFC
def test_mpfc_labels_are_tokenizer_codes_at_masked_patches(model, tokenizer_checkpoint):
    batch = pretraining_batch()
    # the normalisation the dataset builder registered (its image processor's) is undone
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    previous = registry.get(IMAGE_NORMALIZATION_KEY, no_warning=True)
    registry.register(IMAGE_NORMALIZATION_KEY, (mean, std))
    try:
        with torch.no_grad():
            output = model.forward_mpfc(batch, seeded(0))
            # Mixed precision does not touch the targets: the tokenizer runs in fp32.
            with torch.autocast("cpu", dtype=torch.bfloat16):
                mixed = model.forward_mpfc(batch, seeded(0))
    finally:
        registry.register(IMAGE_NORMALIZATION_KEY, previous)
    codes = load_image_tokenizer(tokenizer_checkpoint).tokenize(
        to_tokenizer_input(batch["image"], list(mean), list(std)))
    assert codes.shape == (len(PRODUCTS), NUM_PATCHES)
    assert len(codes.unique()) > 1  # the check below can tell patches apart
    # the forward draws its patch masks first from the generator it is given
    mask = model.mpfc_patch_mask(batch["image"], seeded(0))
    assert torch.equal(output["mpfc_labels"][mask], codes[mask])
    assert (output["mpfc_labels"][~mask] == IGNORE_INDEX).all()
    assert mixed["mpfc_logits"].dtype == torch.bfloat16
    assert torch.equal(mixed["mpfc_labels"], output["mpfc_labels"])


def test_mpfc_zeroes_masked_grid_features_before_the_projection(model):
    batch = pretraining_batch()
    mask = model.mpfc_patch_mask(batch["image"], seeded(0))
    projected = []
    handle = model.visual_projection.register_forward_pre_hook(
        lambda module, inputs: projected.append(inputs[0]))
    try:
        with torch.no_grad():
            output = model.forward_mpfc(batch, seeded(0))
    finally:
        handle.remove()
    (grid,) = projected
    assert (grid[mask] == 0).all()
    assert (grid[~mask].abs().sum(-1) > 0).all()
    with torch.no_grad():  # the full image went through the ConvNet
        full_grid = model.image_grid_features(batch["image"])
        assert torch.equal(grid[~mask], full_grid[~mask])
        visual_tokens = model.visual_projection(full_grid * ~mask[..., None])
        sequence = model.fuse(batch["input_ids"], batch["input_mask"], visual_tokens)
        expected = model.mpfc_head(sequence[:, 8:])
    torch.testing.assert_close(output["mpfc_logits"], expected)


def test_mpfc_masks_drawn_in_the_model_have_the_configured_ratio(tokenizer_checkpoint):
    for ratio in (0.25, 0.5):
        model = build_model(task_config(tokenizer_checkpoint,
                                        heads={"mpfc": {"mask_ratio": ratio}}))
        with torch.no_grad():
            labels = model.forward_mpfc(pretraining_batch(), seeded(3))["mpfc_labels"]
        masked_per_row = (labels != IGNORE_INDEX).sum(1)
        assert masked_per_row.tolist() == [num_masked_patches(NUM_PATCHES, ratio)] * 6


def test_image_tokenizer_is_frozen_and_outside_the_model(model):
    tokenizer = model.image_tokenizer
    assert not any(p.requires_grad for p in tokenizer.parameters())
    assert not tokenizer.training
    tokenizer_parameters = {id(p) for p in tokenizer.parameters()}
    assert not tokenizer_parameters & {id(p) for p in model.parameters()}
    assert not any(key.startswith("image_tokenizer") for key in model.state_dict())
    optimizer_config = OmegaConf.create({"optimizer": {"params": {"lr": 1e-5}}})
    grouped = {id(p) for g in model.get_optimizer_parameters(optimizer_config) for p in g["params"]}
    assert not tokenizer_parameters & grouped
    model.train()
    assert not tokenizer.training
    model.eval()


def test_mpfc_configuration_errors(tmp_path, tokenizer_checkpoint):
    with pytest.raises(ValueError) as error:
        build_model(task_config(None))
    assert "model_config.fashionvil.heads.mpfc.tokenizer_checkpoint" in str(error.value)
    assert "mmf_run" in str(error.value) and "fashionvil_image_tokenizer" in str(error.value)
    with pytest.raises(ValueError, match="has 12 codes but .*num_codes=16"):
        build_model(task_config(tokenizer_checkpoint, heads={"mpfc": {"num_codes": 16}}))
    small = tmp_path / "small.ckpt"
    save_tiny_image_tokenizer(small, image_size=64, codebook_size=NUM_CODES)
    with pytest.raises(ValueError, match=r"2x2 code grid .* 3x3 grid"):
        build_model(task_config(str(small)))
    # without mpfc no tokenizer is needed
    no_mpfc = build_model(task_config(None, training_tasks=["itc", "mvc"]))
    assert no_mpfc.image_tokenizer is None and not hasattr(no_mpfc, "mpfc_head")


def test_mpfc_classes_default_to_the_tokenizer_codebook(tokenizer_checkpoint):
    model = build_model(task_config(tokenizer_checkpoint, heads={"mpfc": {"num_codes": None}}))
    assert model.mpfc_head[1].out_features == NUM_CODES


# ---------------------------------------------------------------------------------- MVC
def test_drop_tokens_at_random_counts_by_hand():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0],   # 7 real -> round(1.75) = 2 dropped
                         [1, 1, 1, 1, 0, 0, 0, 0],   # 4 -> 1
                         [1, 1, 0, 0, 0, 0, 0, 0],   # 2 -> round(0.5) = 1 (halves up)
                         [1, 0, 0, 0, 0, 0, 0, 0]])  # 1 -> 0: a row keeps a token
    kept = drop_tokens_at_random(mask, 0.25, seeded(0))
    assert kept.dtype == mask.dtype
    assert (kept <= mask).all()
    assert kept.sum(1).tolist() == [5, 3, 1, 1]
    assert torch.equal(kept, drop_tokens_at_random(mask, 0.25, seeded(0)))
    patterns = {tuple(drop_tokens_at_random(mask, 0.25, seeded(s))[0].tolist())
                for s in range(40)}
    assert len(patterns) > 10  # C(7, 2) = 21 possible
    assert torch.equal(drop_tokens_at_random(mask, 1.0, seeded(0)).sum(1), torch.ones(4).long())


def test_mvc_outputs_composed_and_view_embeddings(model, monkeypatch):
    batch = pretraining_batch()
    calls = record_calls(monkeypatch, model, "compose")
    with torch.no_grad():  # eval: no token is dropped
        output = model.forward_mvc(batch, seeded(0))
        _, view_embedding = model.encode_image(batch["image_view2"])
    (input_ids, text_mask, image, visual_mask), = calls
    assert torch.equal(text_mask, batch["input_mask"]) and visual_mask is None
    assert image is batch["image"]
    assert torch.equal(output["view_embedding"], view_embedding)
    monkeypatch.undo()
    with torch.no_grad():
        expected = model.compose(batch["input_ids"], batch["input_mask"], batch["image"])
    assert torch.equal(output["composed_embedding"], expected)
    del batch["image_view2"]
    with pytest.raises(ValueError, match="image_view2"):
        model.forward_mvc(batch, seeded(0))


def test_mvc_drops_a_quarter_of_the_tokens_while_training(tokenizer_checkpoint, monkeypatch):
    model = build_model(task_config(tokenizer_checkpoint)).train()
    batch = pretraining_batch()
    calls = record_calls(monkeypatch, model, "compose")
    with torch.no_grad():
        first = model.forward_mvc(batch, seeded(5))["composed_embedding"]
        second = model.forward_mvc(batch, seeded(5))["composed_embedding"]
    (_, text_mask, _, visual_mask), repeat = calls
    assert torch.equal(first, second) and torch.equal(text_mask, repeat[1])
    assert (text_mask <= batch["input_mask"]).all()
    # rows hold 6 (even) or 4 (odd) real tokens: round(1.5) = 2 and round(1.0) = 1 dropped
    assert text_mask.sum(1).tolist() == [4, 3] * 3
    assert visual_mask.sum(1).tolist() == [NUM_PATCHES - 2] * 6  # round(2.25) = 2

    # A dropped text token does not matter; a kept one does.
    dropped = (batch["input_mask"] == 1) & (text_mask == 0)
    kept = text_mask == 1
    kept[:, 0] = False
    for positions, changes in ((dropped, False), (kept, True)):
        changed = pretraining_batch()
        changed["input_ids"][positions] = VOCAB - 1
        with torch.no_grad():
            composed = model.forward_mvc(changed, seeded(5))["composed_embedding"]
        assert torch.equal(calls[-1][1], text_mask)
        assert (not torch.allclose(composed, first, atol=1e-6)) == changes
    token_drop_off = build_model(task_config(tokenizer_checkpoint,
                                             heads={"mvc": {"token_drop": 0}}))
    calls = record_calls(monkeypatch, token_drop_off.train(), "compose")
    with torch.no_grad():
        token_drop_off.forward_mvc(batch, seeded(5))
    (_, text_mask, _, visual_mask), = calls
    assert torch.equal(text_mask, batch["input_mask"]) and visual_mask is None


# ---------------------------------------------------------------------------------- PAC
def test_pac_applies_one_cosine_classifier_to_both_sides(tokenizer_checkpoint):
    model = build_model(task_config(tokenizer_checkpoint))
    batch = pretraining_batch()
    with torch.no_grad():
        output = model.forward_pac(batch)
        _, image_embedding = model.encode_image(batch["image"])
        _, text_embedding = model.encode_text(batch["input_ids"], batch["input_mask"])
    head = model.pac_head
    weight = head.weight.detach()
    for logits, embedding in ((output["pac_image_logits"], image_embedding),
                              (output["pac_text_logits"], text_embedding)):
        by_hand = head.logit_scale * F.cosine_similarity(
            embedding[:, None, :], weight[None, :, :], dim=-1)
        torch.testing.assert_close(logits, by_hand)
    assert torch.equal(output["pac_labels"], batch["attribute_labels"])
    assert output["pac_labels"].dtype == torch.float32
    with torch.no_grad():  # one classifier: changing one class moves both sides' logits
        head.weight[2] = torch.randn(EMBEDDING_DIM, generator=seeded(9))
        changed = model.forward_pac(batch)
    for key in ("pac_image_logits", "pac_text_logits"):
        assert not torch.allclose(changed[key][:, 2], output[key][:, 2])
        torch.testing.assert_close(changed[key][:, [0, 1, 3, 4]], output[key][:, [0, 1, 3, 4]])


def test_pac_label_errors(model):
    batch = pretraining_batch()
    batch.attribute_labels = torch.zeros(6, NUM_ATTRIBUTES + 1)
    with pytest.raises(ValueError, match=r"expected \[batch, 5\]"):
        model.forward_pac(batch)
    del batch["attribute_labels"]
    with pytest.raises(ValueError, match="attribute_labels"):
        model.forward_pac(batch)


def test_pac_classes_from_the_miners_vocabulary_file(tmp_path, tokenizer_checkpoint):
    vocabulary_file = tmp_path / "attributes.json"
    vocabulary_file.write_text('{"vocabulary": ["red", "dress", "striped"], "counts": {}}')
    heads = {"pac": {"num_attributes": None, "attributes_file": str(vocabulary_file)}}
    model = build_model(task_config(tokenizer_checkpoint, heads=heads))
    assert model.pac_head.weight.shape[0] == 3
    missing = {"pac": {"num_attributes": None, "attributes_file": str(tmp_path / "none.json")}}
    with pytest.raises(ValueError, match="none.json does not exist.*mmf_fashionvil.tools.attributes"):
        build_model(task_config(tokenizer_checkpoint, heads=missing))


# ------------------------------------------------------------------------ evaluation task
def test_evaluation_batches_run_the_configured_evaluation_task(tokenizer_checkpoint):
    model = build_model(task_config(tokenizer_checkpoint, training_tasks=["mlm", "itc"],
                              evaluation_task="itc"))
    batch = pretraining_batch()
    model.eval()
    with torch.no_grad():
        assert "image_embedding" in model.forward(batch)  # itc, although mlm is listed first
        batch.task = "mlm"
        assert "mlm_logits" in model.forward(batch)  # a task named by the batch wins
    model.train()
    del batch["task"]
    assert "mlm_logits" in model.forward(batch)  # training without a task: the first training task
    with pytest.raises(ValueError, match="evaluation_task=tgx"):
        build_model(task_config(tokenizer_checkpoint, evaluation_task="tgx"))
