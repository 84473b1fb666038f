"""The authors' OCIR model ``fashionvil_ocir_csa`` (modeling/ocir_csa.py) and its paper config."""
import pytest
import torch
from mmf.common.sample import SampleList
from omegaconf import OmegaConf

from mmf_fashionvil.modeling.losses import OutfitItemRetrievalLoss
from mmf_fashionvil.modeling.ocir_csa import DEFAULTS_YAML, OutfitConditionMaskNet
from mmf_fashionvil.training.checkpoints import RequiredWeights, load_model_weights

from helpers import MMF_RUN, build_model, read_jsonl, run_command, short_run_args, tiny_config
from test_ocir import NUM_CATEGORIES, row

FEATURE_DIM, CONDITIONS, HIDDEN = 6, 5, 7


def csa_model(**overrides):
    config = OmegaConf.merge(
        OmegaConf.load(DEFAULTS_YAML).model_config.fashionvil_ocir_csa,
        {"image_encoder": {"arch": "resnet_tiny", "width_base": 8}, "feature_dim": FEATURE_DIM,
         "num_categories": NUM_CATEGORIES, "condition_hidden": HIDDEN}, overrides)
    torch.manual_seed(0)
    model = OutfitConditionMaskNet(config)
    model.build()
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return csa_model()


def by_hand(model, image, source, target):
    """The authors' formulas written out: pooled grid -> linear; conditioned: each of the K
    masks times its softmax weight from the MLP on the two-hot, averaged; s * unit vector."""
    pooled = model.image_encoder(image[None]).mean(1)[0]
    feature = model.projection.weight @ pooled + model.projection.bias
    scale = model.embedding_norm.scale
    if source is None:
        return scale * feature / feature.norm()
    two_hot = torch.zeros(2 * NUM_CATEGORIES)
    two_hot[source], two_hot[NUM_CATEGORIES + target] = 1.0, 1.0
    first, _, second, _ = model.conditions.weights
    weights = torch.softmax(second(torch.relu(first(two_hot))), -1)
    masks = model.conditions.masks
    conditioned = sum(feature * masks[k] * weights[k] for k in range(CONDITIONS)) / CONDITIONS
    return scale * conditioned / conditioned.norm()


def test_query_and_candidate_embeddings_follow_the_authors_formulas(model):
    query, candidate = row((1, 2), (0, 3), category=2), row(item=4, category=1, seed=1)
    with torch.no_grad():
        output = model.forward(SampleList([query, candidate]))
        images = query.outfit_images
        expected_query = (by_hand(model, images[0], 0, 2) + by_hand(model, images[1], 3, 2)) / 2
        expected_item = by_hand(model, candidate.item_image, None, None)
    torch.testing.assert_close(output["outfit_embedding"][0], expected_query)
    torch.testing.assert_close(output["item_embedding"][1], expected_item)
    assert output["item_embedding"][0].abs().sum() == 0  # a query row has no candidate
    assert output["outfit_embedding"][1].abs().sum() == 0  # a candidate row has no outfit


def test_training_pairs_the_blank_with_one_real_question_item_per_row():
    model = csa_model().train()
    sample = row((1, 2), (0, 3), item=5, category=2)
    with torch.no_grad():
        choices = [by_hand(model, sample.outfit_images[k], c, 2) for k, c in ((0, 0), (1, 3))]
        picked = set()
        for seed in range(12):
            batch = SampleList([sample])
            batch.random_seed = seed
            embedding = model.forward(batch)["outfit_embedding"][0]
            matches = [k for k, choice in enumerate(choices)
                       if torch.allclose(embedding, choice, atol=1e-5)]
            assert len(matches) == 1  # one of the two real items, never the padding
            picked.add(matches[0])
    assert picked == {0, 1}


def test_layer4_and_batchnorm_stay_frozen_and_the_loss_trains_the_rest():
    model = csa_model().train()
    assert not any(p.requires_grad for p in model.image_encoder.layer4.parameters())
    batchnorms = [m for m in model.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorms and all(not m.training for m in batchnorms)
    assert not any(p.requires_grad for m in batchnorms for p in m.parameters())
    statistics = [m.running_mean.clone() for m in batchnorms]
    batch = SampleList([row((1, 2), (0, 3), item=5, category=2),
                        row((3,), (1,), item=6, category=0)])
    loss = OutfitItemRetrievalLoss(symmetric=True)(batch, model.forward(batch))
    loss.backward()
    assert all(torch.equal(m.running_mean, s) for m, s in zip(batchnorms, statistics))
    for parameter in (model.image_encoder.conv1.weight, model.projection.weight,
                      model.conditions.masks, model.embedding_norm.scale):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    groups = model.get_optimizer_parameters({"optimizer": {"params": {"lr": 1e-4}}})
    assert {g["name"]: g["lr"] for g in groups} == {"backbone": 1e-4, "head": 1e-4}
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == \
        sum(p.requires_grad for p in model.parameters())


def test_backbone_loads_from_a_fashionvil_checkpoint_and_refuses_one_without_it():
    fashionvil = build_model(tiny_config())  # resnet_tiny at width 8, as csa_model()
    model = csa_model()
    report = load_model_weights(model, fashionvil.state_dict(), "pretrain.ckpt", False,
                                RequiredWeights(prefixes=None))
    assert "encoder.layer.0.attention.self.query.weight" in report["unexpected"]
    for name, value in fashionvil.image_encoder.state_dict().items():
        assert torch.equal(model.image_encoder.state_dict()[name], value), name
    without = {k: v for k, v in fashionvil.state_dict().items()
               if not k.startswith("image_encoder")}
    with pytest.raises(ValueError, match=r"0.0% of the parameters of \['image_encoder'\]"):
        load_model_weights(model, without, "text_only.ckpt", False, RequiredWeights())


def test_num_categories_out_of_range_is_named(model):
    with pytest.raises(ValueError, match="fashionvil_ocir_csa.num_categories"):
        model.forward(SampleList([row((1,), (0,), category=NUM_CATEGORIES)]))


PAPER_CONFIG = "projects/fashionvil/configs/finetuning/ocir_disjoint.yaml"


def test_paper_config_trains_the_authors_model_through_mmf_run(tiny_catalog, tmp_path):
    # The paper config with the sizes made tiny: the recipe (schedule, loss, model) is its own.
    args = short_run_args("polyvore_ocir", updates=4)
    args[0] = "model=fashionvil_ocir_csa"
    code, output = run_command([
        MMF_RUN, f"config={PAPER_CONFIG}", *args[:3], "training.batch_size=8",
        "training.num_workers=0", "training.log_interval=2", "training.evaluation_interval=4",
        "training.checkpoint_interval=4", "training.amp.enabled=false",
        "model_config.fashionvil_ocir_csa.image_encoder.arch=resnet_tiny",
        "model_config.fashionvil_ocir_csa.image_encoder.width_base=8",
        "dataset_config.polyvore_ocir.max_items=4",
        "dataset_config.polyvore_ocir.processors.text_processor.params.vocab="
        f"{tiny_catalog}/vocab/vocab.txt",
        "dataset_config.polyvore_ocir.processors.train_image_processor.params.resize=72",
        "dataset_config.polyvore_ocir.processors.train_image_processor.params.crop=64",
        "dataset_config.polyvore_ocir.processors.eval_image_processor.params.resize=64",
        "dataset_config.polyvore_ocir.processors.eval_image_processor.params.crop=64",
        f"env.data_dir={tiny_catalog}", f"env.save_dir={tmp_path}"])
    assert code == 0, output[-4000:]
    assert [r["update"] for r in read_jsonl(tmp_path / "train_log.jsonl")] == [2, 4]
    metrics = read_jsonl(tmp_path / "eval_log.jsonl")[-1]["metrics"]
    assert any("fashionvil_ocir" in key for key in metrics)
    saved = torch.load(tmp_path / "current.ckpt", weights_only=True)
    config = saved["config"]
    assert config["model"] == "fashionvil_ocir_csa"
    # The authors' recipe (their projects/ocir/configs/polyvore/defaults.yaml).
    assert config["optimizer"]["type"] == "AdamW" and config["optimizer"]["params"]["lr"] == 1e-4
    assert config["scheduler"] == {"type": "warmup_multistep", "params": {
        "num_warmup_steps": 1000, "warmup_start_factor": 0.25, "milestones": [1500, 5000],
        "gamma": 0.1}}
    assert config["training"]["batch_size"] == 8  # the paper's 64, made CPU-sized here
    assert "model.conditions.masks" not in saved["model"]
    assert saved["model"]["conditions.masks"].shape == (5, 256)
