"""The converter of the authors' released checkpoint (``python -m mmf_fashionvil.convert``).

"Theirs" is rebuilt here from the module definitions of their fork (BrandonHanx/mmf): the
image encoder is a torchvision ResNet's children without avgpool / fc under
``image_encoder.model``; ``model.bert`` holds BERT's embeddings plus their three visual tables,
BERT's encoder and pooler; ``model.contrastive_norm.norm_s``; heads ``itm`` (NSP head),
``mlm`` (LM prediction head, decoder tied to the word embeddings), ``mpfc`` (transform +
linear), ``pac`` (cosine classifier with a [hidden, classes] ``projection``). Sizes are tiny:
a ResNet-10 at width 64 (the layout of ResNet-50's names) and the 2-layer test BERT.
"""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from torch import nn
from torchvision.models.resnet import BasicBlock
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertEncoder,
    BertLMPredictionHead,
    BertOnlyNSPHead,
    BertPooler,
    BertPredictionHeadTransform,
)

from mmf_fashionvil.tools.convert import convert_state
from mmf_fashionvil.training.checkpoints import load_model_weights, read_checkpoint

from helpers import REPO, build_model, images, save_tiny_image_tokenizer, text_batch
from helpers import tiny_config

NUM_CODES, NUM_ATTRIBUTES, GRID = 12, 9, 4  # 64 px -> 2 x 2 grid


class CosineProjection(nn.Module):
    """Their PAC head's parameter layout: ``projection`` [hidden, classes]."""

    def __init__(self, hidden, classes):
        super().__init__()
        self.projection = nn.Parameter(torch.randn(hidden, classes))


def authors_model(bert_config):
    torch.manual_seed(1)
    resnet = torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1])
    root, bert = nn.Module(), nn.Module()
    root.image_encoder = nn.Module()
    root.image_encoder.model = nn.Sequential(*list(resnet.children())[:-2])
    bert.embeddings = BertEmbeddings(bert_config)
    width = bert_config.hidden_size
    bert.embeddings.token_type_embeddings_visual = nn.Embedding(bert_config.type_vocab_size, width)
    bert.embeddings.position_embeddings_visual = nn.Embedding(
        bert_config.max_position_embeddings, width)
    bert.embeddings.projection = nn.Linear(512, width)
    bert.encoder = BertEncoder(bert_config)
    bert.pooler = BertPooler(bert_config)
    root.model = nn.Module()
    root.model.bert = bert
    root.model.contrastive_norm = nn.Module()
    root.model.contrastive_norm.norm_s = nn.Parameter(torch.tensor([4.0]))
    mlm = BertLMPredictionHead(bert_config)
    mlm.decoder.weight = bert.embeddings.word_embeddings.weight
    mlm.decoder.bias = mlm.bias
    root.model.heads = nn.ModuleDict({
        "itm": BertOnlyNSPHead(bert_config),
        "mlm": mlm,
        "mpfc": nn.Sequential(BertPredictionHeadTransform(bert_config),
                              nn.Linear(width, NUM_CODES)),
        "pac": CosineProjection(width, NUM_ATTRIBUTES),
    })
    with torch.no_grad():  # every value distinct, so that a swapped name shows
        for parameter in root.parameters():
            parameter.normal_(0, 0.5)
        for name, buffer in root.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.uniform_(0.5, 1.5)
        root.model.contrastive_norm.norm_s.fill_(3.0)  # a scale (s > 0; learned from 4)
    return root.eval()


@pytest.fixture(scope="module")
def ours_and_theirs(tmp_path_factory):
    tokenizer = tmp_path_factory.mktemp("tok") / "tokenizer.ckpt"
    save_tiny_image_tokenizer(tokenizer, codebook_size=NUM_CODES)
    ours = build_model(tiny_config(
        image_encoder={"width_base": 64}, embedding_dim=None,
        training_tasks=["itc", "itm", "mlm", "mpfc", "pac"],
        heads={"mpfc": {"tokenizer_checkpoint": str(tokenizer)},
               "pac": {"num_attributes": NUM_ATTRIBUTES}}))
    theirs = authors_model(ours.bert_config)
    return ours, theirs


def test_conversion_is_complete_on_both_sides(ours_and_theirs):
    ours, theirs = ours_and_theirs
    source = theirs.state_dict()
    source["model.bert.embeddings.position_ids"] = torch.arange(512)[None]
    source["model.image_tokenizer.encoder.weight"] = torch.zeros(1)  # their VQ-VAE's entries
    converted, dropped = convert_state(source, GRID)
    own = ours.state_dict()
    # Ours: every entry comes from their checkpoint, with its shape.
    assert set(converted) == set(own)
    assert {k: tuple(v.shape) for k, v in converted.items()} == \
        {k: tuple(v.shape) for k, v in own.items()}
    # Theirs: only the two intentionally dropped kinds are left out.
    assert set(dropped) == {"model.bert.embeddings.position_ids",
                            "model.image_tokenizer.encoder.weight"}
    report = load_model_weights(ours, converted, "converted", require_all=True)
    assert report == {"missing": [], "unexpected": [], "mismatched": []}


def test_converted_model_computes_what_theirs_computes(ours_and_theirs):
    ours, theirs = ours_and_theirs
    load_model_weights(ours, convert_state(theirs.state_dict(), GRID)[0], "converted",
                       require_all=True)
    bert, heads = theirs.model.bert, theirs.model.heads
    norm_s = theirs.model.contrastive_norm.norm_s
    input_ids, input_mask = text_batch()
    image = images()
    with torch.no_grad():
        # Their forward, written out: text = BERT embeddings; image = ResNet grid -> projection;
        # joint = [text; visual] tables summed, one LayerNorm; additive -10000 mask.
        def encoder(embeddings, mask):
            additive = (1.0 - mask[:, None, None, :].float()) * -10000.0
            return bert.encoder(embeddings, attention_mask=additive)[0]

        text = encoder(bert.embeddings(input_ids), input_mask)
        weights = input_mask[..., None].float()
        text_pooled = (text * weights).sum(1) / weights.sum(1)
        grid = theirs.image_encoder.model(image).flatten(2).transpose(1, 2)
        visual = bert.embeddings.projection(grid)
        embeddings = bert.embeddings
        positions = torch.arange(input_ids.size(1))
        text_part = (embeddings.word_embeddings(input_ids)
                     + embeddings.position_embeddings(positions)
                     + embeddings.token_type_embeddings.weight[0])
        visual_part = (visual + embeddings.position_embeddings_visual.weight[:GRID]
                       + embeddings.token_type_embeddings_visual.weight[0])
        joint = embeddings.LayerNorm(torch.cat([text_part, visual_part], 1))
        joint_mask = torch.cat([input_mask, torch.ones(2, GRID, dtype=input_mask.dtype)], 1)
        itm_logits = heads["itm"](bert.pooler(encoder(joint, joint_mask)))
        projection = heads["pac"].projection
        pac_logits = F.normalize(visual.mean(1), dim=1) @ F.normalize(projection, dim=0)

        visual_tokens, image_embedding = ours.encode_image(image)
        _, text_embedding = ours.encode_text(input_ids, input_mask)
        our_itm = ours.itm_head(ours._pooled(ours.fuse(input_ids, input_mask, visual_tokens)))
        our_pac = ours.pac_head(image_embedding)
    torch.testing.assert_close(image_embedding, norm_s * F.normalize(visual.mean(1), dim=1))
    torch.testing.assert_close(text_embedding, norm_s * F.normalize(text_pooled, dim=1))
    torch.testing.assert_close(our_itm, itm_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(our_pac, pac_logits)


def test_unknown_entries_stop_the_conversion_with_their_names(ours_and_theirs):
    _, theirs = ours_and_theirs
    source = dict(theirs.state_dict(), **{"model.bert_2.encoder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"model\.bert_2\.encoder\.weight.*--skip-unknown"):
        convert_state(source, GRID)
    _, dropped = convert_state(source, GRID, skip_unknown=True)
    assert "model.bert_2.encoder.weight" in dropped
    with pytest.raises(ValueError, match="position_embeddings_visual has 512 rows"):
        convert_state(theirs.state_dict(), 513)


def test_command_line_writes_a_checkpoint_resume_pretrained_loads(ours_and_theirs, tmp_path):
    ours, theirs = ours_and_theirs
    source, out = tmp_path / "fashionvil_final.pth", tmp_path / "converted.ckpt"
    torch.save({"model": {f"module.{k}": v for k, v in theirs.state_dict().items()}}, source)
    done = subprocess.run(
        [sys.executable, "-m", "mmf_fashionvil.convert", "--checkpoint", str(source),
         "--out", str(out), "--image-size", "64"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    saved = read_checkpoint(str(out))
    assert saved["conversion"]["source"] == str(source)
    assert torch.equal(saved["model"]["embeddings.visual_type_embedding"],
                       theirs.model.bert.embeddings.token_type_embeddings_visual.weight[0])
    assert saved["model"]["pac_head.logit_scale"] == 1.0  # theirs: unscaled cosines
    missing = subprocess.run(
        [sys.executable, "-m", "mmf_fashionvil.convert", "--checkpoint", str(tmp_path / "no.pth"),
         "--out", str(tmp_path / "never.ckpt")], cwd=REPO, capture_output=True, text=True,
        timeout=300)
    assert missing.returncode == 1 and "no.pth" in missing.stderr
    assert not (tmp_path / "never.ckpt").exists()


# --------------------------------------------------------------------------- their VQ-VAE
# Their MPFC tokenizer's encoder (their mmf/modules/vae.py VAEEncoder + quant_conv + EMA
# codebook), tiny: 6 levels (stride 32: 64 px -> 2 x 2 codes, the tiny model's grid), widths
# changing at levels 1, 2 and 5 (so shortcut convs occur), attention in level 5 as their
# attn_resolutions [7] gives at 224 px, 32-group norms.
VQ_BASE, VQ_MULTS, VQ_BLOCKS, VQ_ATTENTION_LEVEL = 32, (1, 2, 1, 1, 1, 2), 2, 5
VQ_Z, VQ_CODE_DIM, VQ_CODES = 16, 8, NUM_CODES


def _their_vqvae_shapes():
    """{entry: shape} of their VQ-VAE encoder, from their module definitions."""
    shapes = {}

    def conv(name, out, into, k):
        shapes.update({f"{name}.weight": (out, into, k, k), f"{name}.bias": (out,)})

    def norm(name, channels):
        shapes.update({f"{name}.weight": (channels,), f"{name}.bias": (channels,)})

    def block(name, into, out):
        norm(f"{name}.norm1", into)
        conv(f"{name}.conv1", out, into, 3)
        norm(f"{name}.norm2", out)
        conv(f"{name}.conv2", out, out, 3)
        if into != out:
            conv(f"{name}.nin_shortcut", out, into, 1)

    def attention(name, channels):
        norm(f"{name}.norm", channels)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", channels, channels, 1)

    conv("encoder.conv_in", VQ_BASE, 3, 3)
    channels = VQ_BASE
    for level, mult in enumerate(VQ_MULTS):
        for index in range(VQ_BLOCKS):
            block(f"encoder.down.{level}.block.{index}", channels, VQ_BASE * mult)
            channels = VQ_BASE * mult
            if level == VQ_ATTENTION_LEVEL:
                attention(f"encoder.down.{level}.attn.{index}", channels)
        if level < len(VQ_MULTS) - 1:
            conv(f"encoder.down.{level}.downsample.conv", channels, channels, 3)
    block("encoder.mid.block_1", channels, channels)
    attention("encoder.mid.attn_1", channels)
    block("encoder.mid.block_2", channels, channels)
    norm("encoder.norm_out", channels)
    conv("encoder.conv_out", VQ_Z, channels, 3)
    conv("quant_conv", VQ_CODE_DIM, VQ_Z, 1)
    shapes.update({"quantize.embedding.weight": (VQ_CODES, VQ_CODE_DIM),
                   "quantize.embedding.cluster_size": (VQ_CODES,),
                   "quantize.embedding.embed_avg": (VQ_CODES, VQ_CODE_DIM)})
    return shapes


def their_encoder_latents(state, x):
    """Their encoder + quant_conv, written out from their forward: [B, code dim, h, w]."""
    def conv(name, h, stride=1):
        weight = state[f"{name}.weight"]
        padding = 0 if stride == 2 or weight.shape[-1] == 1 else 1
        return F.conv2d(h, weight, state[f"{name}.bias"], stride=stride, padding=padding)

    def norm(name, h):
        return F.group_norm(h, 32, state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)

    def block(name, h):
        out = conv(f"{name}.conv1", F.silu(norm(f"{name}.norm1", h)))
        out = conv(f"{name}.conv2", F.silu(norm(f"{name}.norm2", out)))
        return (conv(f"{name}.nin_shortcut", h) if f"{name}.nin_shortcut.weight" in state
                else h) + out

    def attention(name, h):
        b, c, height, width = h.shape
        normed = norm(f"{name}.norm", h)
        q, k, v = (conv(f"{name}.{part}", normed).reshape(b, c, -1) for part in "qkv")
        weights = torch.softmax(q.transpose(1, 2) @ k * c ** -0.5, dim=2)  # [b, query, key]
        attended = (v @ weights.transpose(1, 2)).reshape(b, c, height, width)
        return h + conv(f"{name}.proj_out", attended)

    h = conv("encoder.conv_in", x)
    for level in range(len(VQ_MULTS)):
        for index in range(VQ_BLOCKS):
            h = block(f"encoder.down.{level}.block.{index}", h)
            if level == VQ_ATTENTION_LEVEL:
                h = attention(f"encoder.down.{level}.attn.{index}", h)
        if level < len(VQ_MULTS) - 1:
            h = conv(f"encoder.down.{level}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2)
    h = block("encoder.mid.block_2", attention(
        "encoder.mid.attn_1", block("encoder.mid.block_1", h)))
    h = conv("encoder.conv_out", F.silu(norm("encoder.norm_out", h)))
    return conv("quant_conv", h)


def their_codes(state, x):
    """Nearest code (squared Euclidean) of each latent vector, row-major: [B, h * w]."""
    latents = their_encoder_latents(state, x)
    vectors = latents.permute(0, 2, 3, 1).reshape(len(x), -1, VQ_CODE_DIM)
    codebook = state["quantize.embedding.weight"]
    return torch.cdist(vectors, codebook[None].expand(len(x), -1, -1)).argmin(-1)


@pytest.fixture(scope="module")
def their_vqvae():
    """(their VQ-VAE encoder's state dict with random values, [-1, 1] test images); the
    codebook holds latents of other images, so that different patches get different codes."""
    generator = torch.Generator().manual_seed(3)
    state = {name: torch.randn(shape, generator=generator) * (0.2 if len(shape) > 1 else 1.0)
             for name, shape in _their_vqvae_shapes().items()}
    with torch.no_grad():
        seeds = their_encoder_latents(state, torch.rand(6, 3, 64, 64, generator=generator) * 2 - 1)
        vectors = seeds.permute(0, 2, 3, 1).reshape(-1, VQ_CODE_DIM)
    state["quantize.embedding.weight"] = vectors[:VQ_CODES].clone()
    state["quantize.embedding.embed_avg"] = vectors[:VQ_CODES].clone()
    state["quantize.embedding.cluster_size"] = torch.rand(VQ_CODES, generator=generator)
    return state, torch.rand(4, 3, 64, 64, generator=generator) * 2 - 1


def test_their_vqvae_converts_into_a_tokenizer_that_gives_their_codes(their_vqvae):
    from mmf_fashionvil.modeling.image_tokenizer import ImageTokenizer
    from mmf_fashionvil.tools.convert import convert_tokenizer_state

    state, x = their_vqvae
    converted, config = convert_tokenizer_state(state, image_size=64)
    # The architecture as read from their names and shapes.
    assert config["channel_multipliers"] == list(VQ_MULTS)
    assert (config["base_channels"], config["num_res_blocks"], config["stride"]) == \
        (VQ_BASE, VQ_BLOCKS, 32)
    assert config["attention_levels"] == [VQ_ATTENTION_LEVEL] and config["bottleneck_attention"]
    assert (config["encoder_out_channels"], config["latent_dim"], config["codebook_size"]) == \
        (VQ_Z, VQ_CODE_DIM, VQ_CODES)
    assert config["with_decoder"] is False and config["downsample_padding"] == "asymmetric"
    # Complete on our side: every entry of the tokenizer built from that config, with its shape.
    tokenizer = ImageTokenizer(OmegaConf.create(config))
    tokenizer.build()
    assert {k: tuple(v.shape) for k, v in converted.items()} == \
        {k: tuple(v.shape) for k, v in tokenizer.state_dict().items()}
    tokenizer.load_state_dict(converted)
    with torch.no_grad():
        expected_codes = their_codes(state, x)
        torch.testing.assert_close(tokenizer.eval().encode(x), their_encoder_latents(state, x),
                                   atol=1e-4, rtol=1e-4)
        assert torch.equal(tokenizer.tokenize(x), expected_codes)
    assert len(expected_codes.unique()) > 3  # the check compares varied codes
    torch.testing.assert_close(tokenizer.quantizer.embed_sum,
                               state["quantize.embedding.embed_avg"])


def test_their_vqvae_entries_missing_or_unknown_are_named(their_vqvae):
    from mmf_fashionvil.tools.convert import convert_tokenizer_state

    state, _ = their_vqvae
    extra = dict(state, **{"encoder.down.0.block.0.temb_proj.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unknown.*encoder\.down\.0\.block\.0\.temb_proj"):
        convert_tokenizer_state(extra, image_size=64)
    lacking = {k: v for k, v in state.items() if k != "encoder.down.5.attn.1.k.bias"}
    with pytest.raises(ValueError, match=r"encoder\.down\.5\.attn\.1\.k\.bias is missing"):
        convert_tokenizer_state(lacking, image_size=64)
    with pytest.raises(ValueError, match="no quant_conv.weight"):
        convert_tokenizer_state({k: v for k, v in state.items() if "quant_conv" not in k}, 64)


def test_command_line_converts_their_tokenizer_for_the_mpfc_head(
        ours_and_theirs, their_vqvae, tmp_path):
    from mmf_fashionvil.modeling.image_tokenizer import load_image_tokenizer

    _, theirs = ours_and_theirs
    state, x = their_vqvae
    expected = their_codes(state, x)
    # From their VQ-VAE file alone (a bare state dict, as their VQVAEEncoder loads it).
    vqvae, alone = tmp_path / "vqvae_encoder.pth", tmp_path / "alone.ckpt"
    torch.save(state, vqvae)

    def convert(*arguments):
        return subprocess.run([sys.executable, "-m", "mmf_fashionvil.convert", *arguments,
                               "--image-size", "64"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    done = convert("--vqvae", str(vqvae), "--tokenizer-out", str(alone))
    assert done.returncode == 0, done.stderr
    assert torch.equal(load_image_tokenizer(alone).tokenize(x), expected)
    # From the model.image_tokenizer entries of their FashionViL checkpoint, next to the model.
    full, model_out, tokenizer_out = (tmp_path / "fashionvil_final.pth",
                                      tmp_path / "model.ckpt", tmp_path / "tokenizer.ckpt")
    torch.save({"model": dict(theirs.state_dict(), **{
        f"model.image_tokenizer.{name}": value for name, value in state.items()})}, full)
    done = convert("--checkpoint", str(full), "--out", str(model_out),
                   "--tokenizer-out", str(tokenizer_out))
    assert done.returncode == 0, done.stderr
    assert "dropped model.image_tokenizer" not in done.stdout
    # Our FashionViL model takes it as its MPFC tokenizer (grid and codebook checks pass).
    model = build_model(tiny_config(
        image_encoder={"width_base": 64}, embedding_dim=None, training_tasks=["mpfc"],
        heads={"mpfc": {"tokenizer_checkpoint": str(tokenizer_out)}}))
    assert torch.equal(model.image_tokenizer.tokenize(x), expected)
    # A FashionViL checkpoint without their VQ-VAE: a clear error, nothing written.
    bare, never = tmp_path / "no_tokenizer.pth", tmp_path / "never.ckpt"
    torch.save({"model": theirs.state_dict()}, bare)
    done = convert("--checkpoint", str(bare), "--out", str(tmp_path / "model2.ckpt"),
                   "--tokenizer-out", str(never))
    assert done.returncode == 1 and "no model.image_tokenizer" in done.stderr
    assert not never.exists() and not (tmp_path / "model2.ckpt").exists()
    assert convert("--vqvae", str(vqvae)).returncode == 2  # --tokenizer-out is needed
