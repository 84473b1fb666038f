"""VQ-VAE image tokenizer: code grid, nearest-code assignment, EMA codebook, straight-through
gradients, training, codebook usage, perceptual-loss assets and checkpoint loading."""
import collections
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from mmf.common.registry import registry
from mmf.common.sample import SampleList
from mmf_fashionvil import assets
from mmf_fashionvil.modeling.image_tokenizer import (
    DEFAULTS_YAML,
    EMAVectorQuantizer,
    ImageTokenizer,
    codebook_usage,
    load_image_tokenizer,
    to_tokenizer_input,
)

TINY = {
    "image_size": 32, "stride": 8, "base_channels": 8, "channel_multipliers": [1, 2, 2, 4],
    "num_res_blocks": 1, "latent_dim": 8, "codebook_size": 16,
}


def tiny_config(**overrides):
    config = OmegaConf.load(DEFAULTS_YAML).model_config.fashionvil_image_tokenizer
    return OmegaConf.merge(config, TINY, overrides)


def build(**overrides):
    model = ImageTokenizer(tiny_config(**overrides))
    model.build()
    return model


def batch(images):
    sample_list = SampleList()
    sample_list.image = images
    sample_list.dataset_type = "train"
    sample_list.dataset_name = "squares"
    return sample_list


def coloured_squares(count, size=32, seed=0):
    """[-1, 1] images: a plain background with one square of another colour."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.empty(count, 3, size, size)
    for i in range(count):
        background, foreground = torch.rand(2, 3, generator=generator) * 2 - 1
        side = int(torch.randint(8, 17, (1,), generator=generator))
        top, left = torch.randint(0, size - side + 1, (2,), generator=generator).tolist()
        images[i] = background.view(3, 1, 1)
        images[i, :, top:top + side, left:left + side] = foreground.view(3, 1, 1)
    return images


def test_registered_and_defaults_are_the_authors_tokenizer():
    assert registry.get_model_class("fashionvil_image_tokenizer") is ImageTokenizer
    config = OmegaConf.load(ImageTokenizer.config_path()).model_config.fashionvil_image_tokenizer
    assert config.image_size // config.stride == 7
    assert (config.codebook_size, config.latent_dim) == (1024, 256)
    assert list(config.channel_multipliers) == [1, 1, 2, 2, 4, 4]
    assert config.perceptual.enabled is False


def test_code_grid_is_row_major_nearest_code_of_the_encoder_output():
    torch.manual_seed(0)
    model = build()
    images = torch.rand(3, 3, 32, 48) * 2 - 1  # non-square: a transposed grid would show
    codes = model.tokenize(images)
    assert codes.shape == (3, (32 // 8) * (48 // 8)) and codes.dtype == torch.long

    latents = model.encode(images).detach()
    assert latents.shape == (3, 8, 4, 6)
    for b in range(3):
        for row in range(4):
            for col in range(6):
                distances = torch.cdist(latents[b, :, row, col][None], model.quantizer.codebook)[0]
                chosen = distances[codes[b, row * 6 + col]]
                assert chosen <= distances.min() + 1e-5


def test_grid_matches_resnet_grid_sizes_at_stride_32():
    model = build(stride=32, channel_multipliers=[1, 1, 1, 1, 1, 1], base_channels=4,
                  image_size=64)
    assert model.grid_size == 2
    for size, side in ((64, 2), (96, 3), (128, 4)):
        assert model.tokenize(torch.zeros(1, 3, size, size)).shape == (1, side * side)
    with pytest.raises(ValueError, match="multiple of the tokenizer stride 32"):
        model.tokenize(torch.zeros(1, 3, 100, 96))


def test_inconsistent_stride_and_multipliers_is_rejected():
    with pytest.raises(ValueError, match="stride=16"):
        build(stride=16)


def test_authors_architecture_switches_are_checked_and_an_encoder_only_tokenizer_cannot_train():
    with pytest.raises(ValueError, match="downsample_padding: 'left'"):
        build(downsample_padding="left")
    with pytest.raises(ValueError, match=r"attention_levels=\[4\]: levels run from 0 to 3"):
        build(attention_levels=[4])
    with pytest.raises(ValueError, match="norm_groups=3 does not divide"):
        build(norm_groups=3)
    model = build(with_decoder=False, encoder_out_channels=6, attention_levels=[3],
                  downsample_padding="asymmetric")
    assert model.decoder is None and model.pre_quantization.in_channels == 6
    assert model.tokenize(coloured_squares(2)).shape == (2, 16)  # a 4 x 4 grid at stride 8
    with pytest.raises(ValueError, match="with_decoder is false"):
        model(batch(coloured_squares(2)))


def test_ema_update_matches_hand_computation():
    decay, eps = 0.9, 1e-5
    quantizer = EMAVectorQuantizer(2, 2, decay=decay, epsilon=eps, init_from_data=False)
    quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    quantizer.embed_sum.copy_(quantizer.codebook)
    vectors = torch.tensor([[0.1, 0.0], [0.0, 0.2], [0.2, 0.1], [0.9, 1.3]])

    _, codes, _ = quantizer(vectors, update_codebook=True)

    assert codes.tolist() == [0, 0, 0, 1]
    # counts 3 and 1; sums (0.3, 0.3) and (0.9, 1.3); both codes start with size 1.
    size0, size1 = 0.9 * 1 + 0.1 * 3, 0.9 * 1 + 0.1 * 1
    sum0 = [0.9 * 0.0 + 0.1 * 0.3, 0.9 * 0.0 + 0.1 * 0.3]
    sum1 = [0.9 * 1.0 + 0.1 * 0.9, 0.9 * 1.0 + 0.1 * 1.3]
    total = size0 + size1
    smoothed0 = (size0 + eps) / (total + 2 * eps) * total
    smoothed1 = (size1 + eps) / (total + 2 * eps) * total
    assert torch.allclose(quantizer.cluster_size, torch.tensor([size0, size1]))
    assert torch.allclose(quantizer.embed_sum, torch.tensor([sum0, sum1]))
    expected = torch.tensor([[s / smoothed0 for s in sum0], [s / smoothed1 for s in sum1]])
    assert torch.allclose(quantizer.codebook, expected, atol=1e-6)


def test_no_codebook_update_without_update_flag_or_in_tokenize():
    model = build()
    model.train()
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    model.tokenize(coloured_squares(4))
    for key, value in model.quantizer.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_data_initialisation_and_dead_code_reseeding_use_batch_vectors():
    quantizer = EMAVectorQuantizer(4, 2, decay=0.5, dead_code_threshold=0.3)
    # One tight cluster far from randn's codes: whichever rows the draw picks, codes seeded
    # from the batch and moved by one update (to means of batch vectors) stay within it.
    vectors = torch.tensor([[5.0, 5.0], [5.0, 5.1], [5.1, 5.0]])
    quantizer(vectors, update_codebook=True)
    assert quantizer.initialized
    for code in quantizer.codebook:
        assert torch.cdist(code[None], vectors).min() < 0.2
    # A code far from all data starves: its size halves each step until it is re-seeded.
    quantizer.codebook[3] = torch.tensor([100.0, 100.0])
    quantizer.embed_sum[3] = quantizer.codebook[3]
    quantizer.cluster_size[3] = 1.0
    quantizer(vectors, update_codebook=True)
    assert quantizer.cluster_size[3] == 0.5  # above the threshold: kept
    assert torch.allclose(quantizer.codebook[3], torch.tensor([100.0, 100.0]), rtol=1e-3)
    quantizer(vectors, update_codebook=True)  # 0.25 < 0.3: re-seeded on a batch vector
    assert (quantizer.codebook[3] == vectors).all(1).any()
    assert torch.equal(quantizer.embed_sum[3], quantizer.codebook[3])
    assert quantizer.cluster_size[3] == 1.0


def _ddp_quantizer_worker(rank, init_file, out_dir, vectors):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    local = vectors.chunk(2)[rank]
    torch.manual_seed(0)  # same starting codebook on both ranks
    ema = EMAVectorQuantizer(3, 2, decay=0.8, init_from_data=False)
    ema(local, update_codebook=True)
    torch.manual_seed(rank)  # different random draws: rank 0's must win
    seeded = EMAVectorQuantizer(3, 2, decay=0.8, init_from_data=True)
    seeded(local, update_codebook=True)
    torch.manual_seed(0)
    restarted = EMAVectorQuantizer(4, 2, decay=0.5, dead_code_threshold=0.6, init_from_data=False)
    restarted.codebook[2:] = 100.0  # never nearest: cluster size 1 -> 0.5 < 0.6, re-seeded
    restarted.embed_sum[2:] = 100.0
    torch.manual_seed(rank)
    restarted(local, update_codebook=True)
    torch.save({"ema": ema.state_dict(), "seeded": seeded.state_dict(),
                "restarted": restarted.state_dict()}, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def test_ema_update_under_two_ranks_equals_one_process_on_the_whole_batch(tmp_path):
    vectors = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    # fork: the ranks inherit the imported modules (spawn would re-import MMF per rank).
    mp.start_processes(_ddp_quantizer_worker, nprocs=2, start_method="fork",
                       args=(str(tmp_path / "init"), str(tmp_path), vectors))
    states = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    torch.manual_seed(0)
    single = EMAVectorQuantizer(3, 2, decay=0.8, init_from_data=False)
    single(vectors, update_codebook=True)
    for state in states:
        for key, value in single.state_dict().items():
            assert torch.allclose(state["ema"][key], value, atol=1e-6), key
    assert torch.equal(states[0]["seeded"]["codebook"], states[1]["seeded"]["codebook"])
    # Dead-code restarts: the same codes re-seeded on the same (rank 0's) vectors everywhere.
    for key, value in states[0]["restarted"].items():
        assert torch.equal(states[1]["restarted"][key], value), key
    rank0_vectors = vectors.chunk(2)[0]
    for code in states[0]["restarted"]["codebook"][2:]:
        assert (code == rank0_vectors).all(1).any()
    assert states[0]["restarted"]["cluster_size"][2:].tolist() == [1.0, 1.0]


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = build()
    model.train()
    output = model(batch(coloured_squares(4)))
    output["losses"]["train/squares/vq_reconstruction"].backward()
    encoder_grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in encoder_grads)
    assert sum(g.abs().sum() for g in encoder_grads) > 0
    assert not any(b.requires_grad for b in model.quantizer.buffers())


def test_forward_outputs():
    torch.manual_seed(0)
    model = build()
    output = model(batch(coloured_squares(4)))
    assert set(output["losses"]) == {"train/squares/vq_reconstruction",
                                     "train/squares/vq_commitment"}
    assert output["codes"].shape == (4, 16)
    assert output["reconstruction"].shape == (4, 3, 32, 32)
    # Diagnostics the trainer logs: usage of the batch's 4 x 16 codes, by hand.
    counts = collections.Counter(output["codes"].flatten().tolist())
    entropy = -sum(n / 64 * math.log(n / 64) for n in counts.values())
    assert output["diagnostics"].keys() == {"train/squares/codebook_perplexity",
                                            "train/squares/codebook_used_fraction"}
    assert math.isclose(output["diagnostics"]["train/squares/codebook_perplexity"].item(),
                        math.exp(entropy), rel_tol=1e-5)
    assert output["diagnostics"]["train/squares/codebook_used_fraction"].item() == len(counts) / 16
    assert all(value.dim() == 0 for value in output["diagnostics"].values())


def test_commitment_loss_is_beta_times_latent_to_code_distance():
    torch.manual_seed(0)
    model = build(commitment_weight=0.25, init_codebook_from_data=False)
    model.eval()
    images = coloured_squares(2)
    output = model(batch(images))
    latents = model.encode(images).permute(0, 2, 3, 1).reshape(-1, 8)
    nearest = torch.cdist(latents, model.quantizer.codebook).min(1).values
    expected = 0.25 * nearest.pow(2).sum() / latents.numel()
    assert torch.allclose(output["losses"]["train/squares/vq_commitment"], expected, rtol=1e-4)


def test_short_training_reduces_reconstruction_loss():
    torch.manual_seed(0)
    model = build(reconstruction_loss="mse", codebook_size=32)
    model.train()
    images = coloured_squares(8)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(60):
        output = model(batch(images))
        loss = sum(output["losses"].values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(output["losses"]["train/squares/vq_reconstruction"].item())
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert output["diagnostics"]["train/squares/codebook_perplexity"] > 4  # no collapse


def test_dead_code_restarts_recover_from_a_drifted_latent_cloud():
    # The collapse the tiny mmf_run showed: the encoder's outputs drift away from where the
    # codebook was seeded, one code is nearest to all of them and follows them (EMA), the
    # others are never assigned again. Re-seeding dead codes on batch vectors undoes it.
    cloud = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    used = {}
    for threshold in (0.0, 1.0):
        torch.manual_seed(0)
        # decay 0.9: codes used before the drift drop below size 1 within a few updates.
        quantizer = EMAVectorQuantizer(16, 4, decay=0.9, dead_code_threshold=threshold)
        quantizer(cloud, update_codebook=True)  # seeded on the cloud: ~16 vectors per code
        for _ in range(20):
            _, codes, _ = quantizer(cloud + 10.0, update_codebook=True)
        used[threshold] = codes.unique().numel()
    assert used[0.0] == 1
    assert used[1.0] >= 14


def test_codebook_usage_matches_hand_computation():
    perplexity, used = codebook_usage(torch.tensor([[0, 0], [1, 3]]), 4)
    # p = (1/2, 1/4, 0, 1/4): entropy = 1/2 ln 2 + 2 * 1/4 ln 4 = 3/2 ln 2.
    assert math.isclose(perplexity.item(), 2 ** 1.5, rel_tol=1e-6)
    assert used.item() == 0.75
    perplexity, used = codebook_usage(torch.arange(8), 8)
    assert math.isclose(perplexity.item(), 8.0, rel_tol=1e-6) and used.item() == 1.0


def test_to_tokenizer_input_undoes_dataset_normalisation():
    pixels = torch.rand(2, 3, 4, 4)
    mean, std = (0.4678, 0.4453, 0.4066), (0.1222, 0.1215, 0.1438)
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(to_tokenizer_input(normalised, mean, std), pixels * 2 - 1, atol=1e-6)
    # mean = std = 0.5 is already the tokenizer's range.
    assert torch.allclose(to_tokenizer_input(pixels * 2 - 1, [0.5] * 3, [0.5] * 3), pixels * 2 - 1)


def test_perceptual_without_weights_is_an_actionable_error(tmp_path):
    missing = tmp_path / "vgg16.pth"
    with pytest.raises(assets.MissingAssetError) as error:
        build(perceptual={"enabled": True, "weights": str(missing)})
    message = str(error.value)
    assert str(missing) in message
    assert "download.pytorch.org/models/vgg16" in message  # the fetch command
    assert "model_config.fashionvil_image_tokenizer.perceptual.weights" in message


def test_perceptual_loss_with_local_vgg16_weights(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["D"])
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    model = build(perceptual={"enabled": True, "weights": str(path), "weight": 0.5})
    images = coloured_squares(2)
    losses = model(batch(images))["losses"]
    perceptual = losses["train/squares/vq_perceptual"]
    assert perceptual > 0
    perceptual.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    assert model._perceptual(images, images) == 0
    # The frozen VGG is no part of the tokenizer's checkpoint.
    assert not any("features" in key for key in model.state_dict())


def test_load_image_tokenizer_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build()
    model.train()
    model(batch(coloured_squares(4)))  # seeds and updates the codebook
    config = {"model": "fashionvil_image_tokenizer",
              "model_config": {"fashionvil_image_tokenizer": OmegaConf.to_container(model.config)}}
    path = tmp_path / "tokenizer.ckpt"
    torch.save({"model": model.state_dict(), "config": config}, path)

    loaded = load_image_tokenizer(path)
    assert not loaded.training
    images = coloured_squares(3, seed=1)
    assert torch.equal(loaded.tokenize(images), model.tokenize(images))


def test_load_image_tokenizer_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.ckpt"):
        load_image_tokenizer(tmp_path / "nothere.ckpt")
    path = tmp_path / "weights_only.ckpt"
    torch.save(build().state_dict(), path)
    with pytest.raises(ValueError, match="weights_only.ckpt.*expected"):
        load_image_tokenizer(path)


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "projects", "fashionvil", "configs")


def run_config(name):
    """The tokenizer's model config of a run config, merged over the model defaults."""
    run = OmegaConf.load(os.path.join(CONFIGS, "pretraining", name))
    defaults = OmegaConf.load(DEFAULTS_YAML).model_config.fashionvil_image_tokenizer
    return OmegaConf.merge(defaults, run.model_config.fashionvil_image_tokenizer), run


@pytest.mark.parametrize("name,fashionvil_image_size,codes,dim,perceptual", [
    ("image_tokenizer_tiny.yaml", None, 64, 32, False),  # None: tiny_base.yaml's size
    ("image_tokenizer.yaml", 224, 1024, 256, True),
])
def test_run_configs_align_the_code_grid_with_the_fashionvil_grid(
    name, fashionvil_image_size, codes, dim, perceptual
):
    from mmf_fashionvil.modeling.layers import grid_side

    if fashionvil_image_size is None:
        tiny_base = OmegaConf.load(os.path.join(CONFIGS, "tiny_base.yaml"))
        fashionvil_image_size = tiny_base.model_config.fashionvil.image_encoder.image_size
    config, run = run_config(name)
    tokenizer = ImageTokenizer(OmegaConf.merge(config, {"perceptual": {"enabled": False}}))
    tokenizer.build()
    assert tokenizer.grid_size == grid_side(fashionvil_image_size)
    assert (tokenizer.codebook_size, config.latent_dim) == (codes, dim)
    assert config.perceptual.enabled is perceptual
    # Trained on [-1, 1] images (what tokenize expects) at the configured size; the full
    # size on the pre-training union, as the authors' tokenizer.
    (dataset, dataset_config), = run.dataset_config.items()
    assert dataset == ("fashiongen" if "tiny" in name else "fashion_pretraining")
    for split in ("train", "eval"):
        params = dataset_config.processors[f"{split}_image_processor"].params
        assert list(params.mean) == list(params.std) == [0.5, 0.5, 0.5]
        assert params.crop == config.image_size
