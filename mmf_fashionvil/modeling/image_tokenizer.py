"""VQ-VAE image tokenizer for masked patch feature classification (MPFC, SPEC §2 and §9).

Registered as the MMF model ``fashionvil_image_tokenizer``. A conv encoder downsamples the
image by ``stride`` (default 32: 224 px -> a 7 x 7 grid, one code per cell of the
FashionViL ResNet grid), an EMA-updated codebook quantises each latent vector with a
straight-through estimator, and a conv decoder mirrors the encoder. Four switches
(``attention_levels``, ``downsample_padding``, ``norm_groups``, ``encoder_out_channels``)
give the authors' encoder, into which ``python -m mmf_fashionvil.convert --tokenizer-out``
converts their released weights (``with_decoder: false``: they released no decoder).

Input normalisation: the tokenizer is trained on, and ``tokenize`` expects, images in
[-1, 1] (``2 * x - 1`` of [0, 1] pixels). To train it with an MMF dataset, configure the
dataset's image normalisation with mean = std = (0.5, 0.5, 0.5), which gives exactly that.
Images normalised with other statistics (e.g. FashionViL's fashion mean/std) must go
through ``to_tokenizer_input(images, mean, std)`` before ``tokenize``.

Checkpoint format read by ``load_image_tokenizer``: ``torch.save({"model": state_dict,
"config": OmegaConf.to_container(full_config)})`` (what our trainer writes); the
architecture comes from ``config["model_config"]["fashionvil_image_tokenizer"]``.
"""
import math
import os
import pickle

import torch
import torch.distributed as dist
import torch.nn.functional as F
from mmf.common.registry import registry
from mmf.models.base_model import BaseModel
from omegaconf import OmegaConf
from torch import nn

from mmf_fashionvil import CONFIGS_DIR, assets

MODEL_NAME = "fashionvil_image_tokenizer"
CONFIG_PREFIX = f"model_config.{MODEL_NAME}"
DEFAULTS_YAML = os.path.join(CONFIGS_DIR, "models", MODEL_NAME, "defaults.yaml")
RECONSTRUCTION_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}
DOWNSAMPLE_PADDINGS = ("symmetric", "asymmetric")
# torchvision VGG16 `features` indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG16_FEATURE_LAYERS = (3, 8, 15, 22, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tokenizer_input(images, mean, std):
    """Maps images normalised as ``(x - mean) / std`` (x in [0, 1]) to the tokenizer's
    [-1, 1] input range. ``mean``/``std``: one value per channel."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std + mean) * 2 - 1


def codebook_usage(codes, num_codes):
    """(perplexity, fraction of codes used) of a batch of code ids.

    Perplexity = exp(entropy of the empirical code distribution): 1 when one code takes
    everything, ``num_codes`` when all are used equally often.
    """
    probabilities = torch.bincount(codes.flatten(), minlength=num_codes).float()
    probabilities = probabilities / probabilities.sum()
    entropy = -(probabilities * torch.log(probabilities.clamp(min=1e-12))).sum()
    return torch.exp(entropy), (probabilities > 0).float().mean()


def _distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _group_norm(channels, groups=None):
    """GroupNorm with ``groups`` groups; None: up to 32 (the usual VQ-VAE setting at >= 128
    channels) but at least 4 channels per group, as one channel per group (instance norm)
    would erase each image's colours. The authors' tokenizer uses 32 at every width."""
    if groups is None:
        groups = math.gcd(32, channels, max(channels // 4, 1))
    elif channels % groups:
        raise ValueError(f"{CONFIG_PREFIX}.norm_groups={groups} does not divide a layer's "
                         f"{channels} channels")
    return nn.GroupNorm(groups, channels, eps=1e-6)


def _downsample(channels, padding):
    """Stride-2 3 x 3 conv. "symmetric": one pixel of zeros on every side; "asymmetric":
    one on the right and bottom only (the authors' tokenizer; the grid shifts by half a pixel,
    so their weights need it)."""
    if padding == "symmetric":
        return nn.Conv2d(channels, channels, 3, stride=2, padding=1)
    return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(channels, channels, 3, stride=2))


class ResidualBlock(nn.Module):
    def __init__(self, in_channels, out_channels, norm_groups=None):
        super().__init__()
        self.body = nn.Sequential(
            _group_norm(in_channels, norm_groups), nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _group_norm(out_channels, norm_groups), nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.shortcut = (
            nn.Identity() if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x):
        return self.shortcut(x) + self.body(x)


class SelfAttentionBlock(nn.Module):
    """Single-head self-attention over the grid positions (the authors attend at 7 x 7)."""

    def __init__(self, channels, norm_groups=None):
        super().__init__()
        self.norm = _group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(attended.transpose(1, 2).reshape(batch, channels, height, width))


def _bottleneck(channels, attention, norm_groups):
    layers = [ResidualBlock(channels, channels, norm_groups)]
    if attention:
        layers.append(SelfAttentionBlock(channels, norm_groups))
    layers.append(ResidualBlock(channels, channels, norm_groups))
    return layers


def _level(in_channels, width, num_res_blocks, attention, norm_groups):
    """One resolution level: residual blocks, each followed by self-attention if ``attention``."""
    layers = []
    for _ in range(num_res_blocks):
        layers.append(ResidualBlock(in_channels, width, norm_groups))
        if attention:
            layers.append(SelfAttentionBlock(width, norm_groups))
        in_channels = width
    return layers


class Encoder(nn.Sequential):
    """Level i has ``num_res_blocks`` residual blocks at base * mults[i] channels (each
    followed by self-attention when i is in ``attention_levels``; level 0 is the input
    resolution) and is followed by a stride-2 conv, except the last: total stride
    2 ** (len(mults) - 1)."""

    def __init__(self, base_channels, channel_multipliers, num_res_blocks, out_channels,
                 attention, attention_levels=(), downsample_padding="symmetric",
                 norm_groups=None):
        widths = [base_channels * m for m in channel_multipliers]
        layers = [nn.Conv2d(3, widths[0], 3, padding=1)]
        channels = widths[0]
        for level, width in enumerate(widths):
            layers += _level(channels, width, num_res_blocks, level in attention_levels,
                             norm_groups)
            channels = width
            if level < len(widths) - 1:
                layers.append(_downsample(channels, downsample_padding))
        layers += _bottleneck(channels, attention, norm_groups)
        layers += [_group_norm(channels, norm_groups), nn.SiLU(),
                   nn.Conv2d(channels, out_channels, 3, padding=1)]
        super().__init__(*layers)


class Decoder(nn.Sequential):
    """Mirror of ``Encoder``: nearest-neighbour x2 upsampling + conv between levels."""

    def __init__(self, base_channels, channel_multipliers, num_res_blocks, latent_dim,
                 attention, attention_levels=(), norm_groups=None):
        widths = [base_channels * m for m in reversed(channel_multipliers)]
        channels = widths[0]
        layers = [nn.Conv2d(latent_dim, channels, 3, padding=1)]
        layers += _bottleneck(channels, attention, norm_groups)
        for index, width in enumerate(widths):
            level = len(widths) - 1 - index
            layers += _level(channels, width, num_res_blocks, level in attention_levels,
                             norm_groups)
            channels = width
            if level > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(channels, channels, 3, padding=1)]
        layers += [_group_norm(channels, norm_groups), nn.SiLU(),
                   nn.Conv2d(channels, 3, 3, padding=1)]
        super().__init__(*layers)


class EMAVectorQuantizer(nn.Module):
    """Nearest-code quantiser whose codebook follows an exponential moving average of the
    vectors assigned to each code (van den Oord et al. 2017, appendix A.1).

    Per update with batch counts n_k and sums s_k (summed over all ranks under DDP):
        cluster_size_k <- decay * cluster_size_k + (1 - decay) * n_k
        embed_sum_k    <- decay * embed_sum_k    + (1 - decay) * s_k
        codebook_k     <- embed_sum_k / smoothed_k,
        smoothed_k = (cluster_size_k + eps) / (N + K * eps) * N,  N = sum_k cluster_size_k
    (Laplace smoothing keeps rarely used codes from dividing by ~0). Each code starts
    with cluster size 1 and embed sum equal to itself, so an unused code stays in place.
    Codes whose cluster size falls below ``dead_code_threshold`` (0 disables) are moved
    onto random vectors of the current batch; with ``init_from_data`` the first update
    places the whole codebook on random batch vectors.

    Why restarts: early in training the encoder's outputs drift away from where the
    codebook was seeded; one code per region ends up nearest to all of them and follows
    them, the others are never assigned again. The tiny mmf_run showed exactly that (4 of
    64 codes, one per grid position, the same for every image) while a threshold of 0.01
    never fired (an unused code's size 0.99 ** t needs ~460 updates to fall below it).
    With threshold 1 (an EMA of fewer than one assignment per update) a never-used code is
    re-seeded after one update, one that had n assignments per update and stops being used
    after about ln(n) / (1 - decay) updates.
    """

    def __init__(self, num_codes, dim, decay=0.99, epsilon=1e-5, dead_code_threshold=0.0,
                 init_from_data=True):
        super().__init__()
        self.num_codes = num_codes
        self.decay = decay
        self.epsilon = epsilon
        self.dead_code_threshold = dead_code_threshold
        codebook = torch.randn(num_codes, dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_sum", codebook.clone())
        self.register_buffer("initialized", torch.tensor(not init_from_data))

    def assign(self, vectors):
        """Index of the nearest code (squared Euclidean distance) of each row of ``vectors``."""
        distances = (
            vectors.pow(2).sum(1, keepdim=True)
            - 2 * vectors @ self.codebook.t()
            + self.codebook.pow(2).sum(1)
        )
        return distances.argmin(1)

    def forward(self, vectors, update_codebook):
        """``vectors`` [N, dim] -> (straight-through quantised vectors [N, dim], codes [N],
        commitment loss mean((vectors - sg(quantised))^2))."""
        input_dtype = vectors.dtype
        with torch.autocast(device_type=vectors.device.type, enabled=False):
            vectors = vectors.float()
            if update_codebook and not bool(self.initialized):
                self._initialize_from(vectors.detach())
            codes = self.assign(vectors.detach())
            quantized = F.embedding(codes, self.codebook)  # the codes as assigned, pre-update
            if update_codebook:
                self._ema_update(vectors.detach(), codes)
            commitment = F.mse_loss(vectors, quantized)
            quantized = vectors + (quantized - vectors).detach()
        return quantized.to(input_dtype), codes, commitment

    @torch.no_grad()
    def _random_rows(self, vectors, count):
        """``count`` random rows of ``vectors``, identical on every rank (rank 0's draw)."""
        rows = vectors[torch.randint(len(vectors), (count,), device=vectors.device)]
        if _distributed():
            dist.broadcast(rows, src=0)
        return rows

    @torch.no_grad()
    def _initialize_from(self, vectors):
        self.codebook.copy_(self._random_rows(vectors, self.num_codes))
        self.embed_sum.copy_(self.codebook)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, vectors, codes):
        one_hot = F.one_hot(codes, self.num_codes).type_as(vectors)
        batch_counts = one_hot.sum(0)
        batch_sums = one_hot.t() @ vectors
        if _distributed():
            dist.all_reduce(batch_counts)
            dist.all_reduce(batch_sums)
        self.cluster_size.mul_(self.decay).add_(batch_counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(batch_sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.num_codes * self.epsilon)
        self.codebook.copy_(self.embed_sum / (smoothed * total).unsqueeze(1))
        if self.dead_code_threshold > 0:
            dead = self.cluster_size < self.dead_code_threshold
            if dead.any():
                # cluster_size is identical on all ranks, so all ranks take this branch.
                replacements = self._random_rows(vectors, int(dead.sum()))
                self.codebook[dead] = replacements
                self.embed_sum[dead] = replacements
                self.cluster_size[dead] = 1.0


class VGG16PerceptualLoss(nn.Module):
    """LPIPS-style distance without learned layer weights: squared difference of the
    channel-normalised VGG16 activations (ImageNet weights), summed over channels, averaged
    over images and positions, summed over relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""

    def __init__(self, weights):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        # The 13 conv layers (and ReLUs/pools between them) up to relu5_3, named as
        # torchvision's vgg16().features so that its state dict loads as is.
        self.features = make_layers(cfgs["D"][:-1])
        state_dict = assets.load_resnet_state_dict(
            "vgg16", weights, config_key=f"{CONFIG_PREFIX}.perceptual.weights"
        )
        features_state = {
            key[len("features."):]: value for key, value in state_dict.items()
            if key.startswith("features.")
        }
        try:
            self.features.load_state_dict(features_state)
        except RuntimeError as error:
            raise ValueError(
                f"{CONFIG_PREFIX}.perceptual.weights={weights}: not a torchvision VGG16 "
                f"state dict (features.* keys): {error}"
            ) from error
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def _activations(self, images):
        x = ((images + 1) / 2 - self.mean) / self.std  # [-1, 1] -> ImageNet statistics
        activations = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG16_FEATURE_LAYERS:
                activations.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
        return activations

    def forward(self, reconstruction, target):
        return sum(
            (a - b).pow(2).sum(1).mean()
            for a, b in zip(self._activations(reconstruction), self._activations(target))
        )


@registry.register_model(MODEL_NAME)
class ImageTokenizer(BaseModel):
    """VQ-VAE whose ``tokenize`` gives the MPFC target of each grid cell (row-major)."""

    def __init__(self, config):
        super().__init__(config)
        self._perceptual = None  # VGG16PerceptualLoss when perceptual.enabled

    @classmethod
    def config_path(cls):
        return DEFAULTS_YAML

    def build(self):
        config = self.config
        multipliers = list(config.channel_multipliers)
        self.stride = int(config.stride)
        if self.stride != 2 ** (len(multipliers) - 1):
            raise ValueError(
                f"{CONFIG_PREFIX}: stride={self.stride} must equal 2 ** (len(channel_multipliers) "
                f"- 1) (one downsampling between consecutive levels); channel_multipliers="
                f"{multipliers} gives {2 ** (len(multipliers) - 1)}"
            )
        if int(config.image_size) % self.stride:
            raise ValueError(
                f"{CONFIG_PREFIX}: image_size={config.image_size} is not a multiple of "
                f"stride={self.stride}"
            )
        if config.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(
                f"{CONFIG_PREFIX}.reconstruction_loss: '{config.reconstruction_loss}', "
                f"expected one of {sorted(RECONSTRUCTION_LOSSES)}"
            )
        padding = config.downsample_padding
        if padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"{CONFIG_PREFIX}.downsample_padding: '{padding}', expected one "
                             f"of {list(DOWNSAMPLE_PADDINGS)}")
        attention_levels = [int(level) for level in config.attention_levels]
        if any(not 0 <= level < len(multipliers) for level in attention_levels):
            raise ValueError(f"{CONFIG_PREFIX}.attention_levels={attention_levels}: levels "
                             f"run from 0 to {len(multipliers) - 1}")
        norm_groups = config.norm_groups
        architecture = dict(
            base_channels=int(config.base_channels), channel_multipliers=multipliers,
            num_res_blocks=int(config.num_res_blocks),
            attention=bool(config.bottleneck_attention), attention_levels=attention_levels,
            norm_groups=None if norm_groups is None else int(norm_groups),
        )
        latent_dim = int(config.latent_dim)
        # The authors' encoder ends at z_channels and maps them to the code size with a
        # 1 x 1 conv ("quant_conv"); ours ends at the code size.
        encoder_out = config.encoder_out_channels
        self.encoder = Encoder(out_channels=latent_dim if encoder_out is None
                               else int(encoder_out),
                               downsample_padding=padding, **architecture)
        self.pre_quantization = (None if encoder_out is None
                                 else nn.Conv2d(int(encoder_out), latent_dim, 1))
        # The authors released their tokenizer's encoder only: it tokenizes, it cannot train.
        self.decoder = (Decoder(latent_dim=latent_dim, **architecture)
                        if config.with_decoder else None)
        self.quantizer = EMAVectorQuantizer(
            int(config.codebook_size), int(config.latent_dim), decay=float(config.ema_decay),
            epsilon=float(config.ema_epsilon),
            dead_code_threshold=float(config.dead_code_threshold or 0.0),
            init_from_data=bool(config.init_codebook_from_data),
        )
        perceptual = config.perceptual
        if perceptual.enabled:
            if perceptual.network != "vgg16":
                raise ValueError(
                    f"{CONFIG_PREFIX}.perceptual.network: '{perceptual.network}' is not "
                    "supported, expected 'vgg16'"
                )
            # Set past nn.Module.__setattr__ so that the frozen VGG is no submodule: not in
            # the state dict (checkpoints load without its weights; tokenize does not need
            # them), not seen by the optimizer or DDP. forward moves it to the images' device.
            object.__setattr__(self, "_perceptual", VGG16PerceptualLoss(perceptual.weights))

    @property
    def codebook_size(self):
        return self.quantizer.num_codes

    @property
    def grid_size(self):
        """Side of the code grid at the configured image size (224 / 32 = 7)."""
        return int(self.config.image_size) // self.stride

    def _check_images(self, images):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[2] % self.stride or images.shape[3] % self.stride:
            raise ValueError(
                f"image size {tuple(images.shape[2:])} is not a multiple of the tokenizer "
                f"stride {self.stride}"
            )

    def encode(self, images):
        """Continuous latents [B, latent_dim, H / stride, W / stride] of [-1, 1] images."""
        self._check_images(images)
        latents = self.encoder(images)
        return latents if self.pre_quantization is None else self.pre_quantization(latents)

    def quantize(self, latents, update_codebook=False):
        """(straight-through quantised latents like ``latents``, codes [B, h * w] row-major,
        commitment loss)."""
        batch, dim, height, width = latents.shape
        vectors = latents.permute(0, 2, 3, 1).reshape(-1, dim)
        quantized, codes, commitment = self.quantizer(vectors, update_codebook)
        quantized = quantized.view(batch, height, width, dim).permute(0, 3, 1, 2)
        return quantized, codes.view(batch, height * width), commitment

    @torch.no_grad()
    def tokenize(self, images):
        """Code ids [B, (H / stride) * (W / stride)] of [-1, 1] images, row-major (the order
        of the flattened ResNet grid). Never updates the codebook."""
        _, codes, _ = self.quantize(self.encode(images))
        return codes

    def forward(self, sample_list):
        if self.decoder is None:
            raise ValueError(f"{CONFIG_PREFIX}.with_decoder is false (an encoder-only "
                             "tokenizer, as the authors released theirs): it tokenizes "
                             "images but cannot be trained")
        images = sample_list.image
        latents = self.encode(images)
        quantized, codes, commitment = self.quantize(latents, update_codebook=self.training)
        reconstruction = self.decoder(quantized)
        prefix = f"{sample_list.dataset_type}/{sample_list.dataset_name}"
        reconstruction_distance = RECONSTRUCTION_LOSSES[self.config.reconstruction_loss]
        losses = {
            f"{prefix}/vq_reconstruction": reconstruction_distance(
                reconstruction.float(), images.float()
            ),
            f"{prefix}/vq_commitment": float(self.config.commitment_weight) * commitment,
        }
        if self._perceptual is not None:
            self._perceptual.to(images.device)
            losses[f"{prefix}/vq_perceptual"] = float(self.config.perceptual.weight) * (
                self._perceptual(reconstruction, images)
            )
        perplexity, used_fraction = codebook_usage(codes, self.codebook_size)
        return {
            "losses": losses,
            "codes": codes,
            "reconstruction": reconstruction,
            # Usage of this (local) batch's codes; the trainer logs the means.
            "diagnostics": {
                f"{prefix}/codebook_perplexity": perplexity,
                f"{prefix}/codebook_used_fraction": used_fraction,
            },
        }


def load_image_tokenizer(checkpoint_path):
    """ImageTokenizer (eval mode, on CPU) from a checkpoint ``{"model": state_dict,
    "config": full config as a plain dict}``; the perceptual loss is left out."""
    checkpoint_path = os.path.expanduser(str(checkpoint_path))
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"image tokenizer checkpoint {checkpoint_path} does not exist")
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{checkpoint_path}: not a plain checkpoint (tensors, dicts, lists, numbers, "
            f"strings only): {error}"
        ) from error
    model_config = None
    if isinstance(checkpoint, dict) and "model" in checkpoint:
        model_config = (checkpoint.get("config") or {}).get("model_config", {}).get(MODEL_NAME)
    if model_config is None:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{checkpoint_path}: expected {{'model': state_dict, 'config': {{'model_config': "
            f"{{'{MODEL_NAME}': ...}}}}}}; found {found}"
        )
    defaults = OmegaConf.load(DEFAULTS_YAML).model_config[MODEL_NAME]
    config = OmegaConf.merge(defaults, model_config, {"perceptual": {"enabled": False}})
    model = ImageTokenizer(config)
    model.build()
    model.load_state_dict(checkpoint["model"])
    return model.eval()
