"""Converts the authors' released FashionViL pre-training checkpoint (``fashionvil_final.pth``,
their MMF fork BrandonHanx/mmf) into a checkpoint the ``fashionvil`` model loads with
``checkpoint.resume_pretrained=True``:

    python -m mmf_fashionvil.convert --checkpoint fashionvil_final.pth \\
        --out fashionvil_converted.ckpt [--image-size 224] [--allow-unsafe-load]

Their model (names from their module definitions): ``image_encoder.model`` = torchvision
ResNet-50 children without avgpool / fc (``0`` conv1, ``1`` bn1, ``4``-``7`` layer1-4);
``model.bert`` = BERT-base with VisualBERT-style embeddings (``projection`` 2048 -> 768,
``position_embeddings_visual`` [512, 768], ``token_type_embeddings_visual`` [2, 768]), encoder
and pooler; ``model.contrastive_norm.norm_s`` [1] (the joint space's scale, no f / g
projection); heads ``itm`` (BERT's NSP head), ``mlm`` (BERT's LM prediction head, decoder tied
to the word embeddings), ``mpfc`` (prediction-head transform + linear to 1,024 codes), ``pac``
(cosine classifier, ``projection`` [768, 2232]).

Every source entry is mapped or dropped for a stated reason (:data:`DROPPED`, reported); an
entry of neither kind stops the conversion with its name (``--skip-unknown`` drops and
reports those too). The converted checkpoint is written atomically. Fine-tune from it with a
config whose model matches theirs: ``model_config.fashionvil.embedding_dim=null`` (the paper
configs' setting) and, for PAC, ``heads.pac.num_attributes=2232``.

Their MPFC target tokenizer, a VQ-VAE encoder (the ``model.image_tokenizer.*`` entries of the
checkpoint, or their separate ``vqvae_ema_pp_224_7x7_encoder_fashionall.pth``), converts into
a ``fashionvil_image_tokenizer`` checkpoint (``--tokenizer-out``) for
``model_config.fashionvil.heads.mpfc.tokenizer_checkpoint``; our model keeps the tokenizer
outside its weights, so ``--out`` never holds it:

    python -m mmf_fashionvil.convert --vqvae vqvae_ema_pp_224_7x7_encoder_fashionall.pth \
        --tokenizer-out vqvae_converted.ckpt

Their encoder (``encoder.{conv_in, down.<level>.{block, attn, downsample}, mid, norm_out,
conv_out}``, ``quant_conv``, ``quantize.embedding.{weight, cluster_size, embed_avg}``) is ours
with their switches: ``attention_levels`` where ``down.<level>.attn`` exists,
``downsample_padding: asymmetric``, ``norm_groups: 32``, ``encoder_out_channels`` =
z_channels, ``with_decoder: false`` (no decoder was released). The architecture is read from
the entries' names and shapes. Their tokenizer expects images in [-1, 1], as ours does.
"""
import argparse
import re
import sys

import torch
from omegaconf import OmegaConf

from mmf_fashionvil.modeling.image_tokenizer import DEFAULTS_YAML as TOKENIZER_DEFAULTS
from mmf_fashionvil.modeling.image_tokenizer import MODEL_NAME as TOKENIZER_NAME
from mmf_fashionvil.modeling.image_tokenizer import (
    ImageTokenizer,
    ResidualBlock,
    SelfAttentionBlock,
)
from mmf_fashionvil.modeling.layers import grid_side
from mmf_fashionvil.training.checkpoints import (
    model_state_from_checkpoint,
    read_checkpoint,
    save_atomic,
)

# Renamed one-to-one (source prefix -> our prefix); the first matching prefix wins.
RENAMED = (
    ("image_encoder.model.0.", "image_encoder.conv1."),
    ("image_encoder.model.1.", "image_encoder.bn1."),
    ("image_encoder.model.4.", "image_encoder.layer1."),
    ("image_encoder.model.5.", "image_encoder.layer2."),
    ("image_encoder.model.6.", "image_encoder.layer3."),
    ("image_encoder.model.7.", "image_encoder.layer4."),
    ("model.bert.embeddings.word_embeddings.", "embeddings.word_embeddings."),
    ("model.bert.embeddings.position_embeddings.", "embeddings.position_embeddings."),
    ("model.bert.embeddings.token_type_embeddings.", "embeddings.token_type_embeddings."),
    ("model.bert.embeddings.LayerNorm.", "embeddings.LayerNorm."),
    ("model.bert.embeddings.projection.", "visual_projection."),
    ("model.bert.encoder.", "encoder."),
    ("model.bert.pooler.dense.", "pooler.0."),
    ("model.heads.itm.seq_relationship.", "itm_head."),
    ("model.heads.mlm.transform.", "mlm_head.predictions.transform."),
    ("model.heads.mlm.bias", "mlm_head.predictions.bias"),
    # Tied to the word embeddings / the head's bias in both models (theirs saves both names).
    ("model.heads.mlm.decoder.", "mlm_head.predictions.decoder."),
    ("model.heads.mpfc.", "mpfc_head."),
)
# Source entries left out on purpose, with the reason the report gives.
DROPPED = (
    (re.compile(r"model\.bert\.embeddings\.(position_ids|token_type_ids)$"),
     "index buffer, recomputed by our embeddings"),
    (re.compile(r"model\.image_tokenizer\."),
     "their VQ-VAE (MPFC targets): our model keeps it outside its weights; "
     "--tokenizer-out converts it"),
)
TOKENIZER_PREFIX = "model.image_tokenizer."
# Their GroupNorm has 32 groups at every width.
AUTHORS_NORM_GROUPS = 32


def _visual_positions(value, num_visual_positions):
    if value.size(0) < num_visual_positions:
        raise ValueError(f"position_embeddings_visual has {value.size(0)} rows, fewer than the "
                         f"{num_visual_positions} visual positions asked for")
    # Their table has max_position_embeddings rows; a grid uses only the first N.
    return value[:num_visual_positions].clone()


# Entries whose value changes form: source name -> (our name, conversion).
RESHAPED = {
    "model.bert.embeddings.position_embeddings_visual.weight": (
        "embeddings.visual_position_embeddings.weight", _visual_positions),
    # Their visual tokens all use type id 0 of this table; row 1 is never read.
    "model.bert.embeddings.token_type_embeddings_visual.weight": (
        "embeddings.visual_type_embedding", lambda value, _: value[0].clone()),
    "model.contrastive_norm.norm_s": ("embedding_norm.scale", lambda value, _: value.reshape(())),
    # Theirs: cosine(features, projection[:, c]); ours holds one row per class.
    "model.heads.pac.projection": ("pac_head.weight", lambda value, _: value.t().contiguous()),
}
# Their PAC logits are unscaled cosines: our learnable logit scale starts at 1 to match.
ADDED = {"pac_head.weight": ("pac_head.logit_scale", torch.tensor(1.0))}


def convert_state(state, num_visual_positions, skip_unknown=False):
    """(our state dict, {dropped source name: reason}) of the authors' state dict ``state``.
    A source entry that is neither converted nor in :data:`DROPPED` is an error naming it
    (``skip_unknown``: dropped with the reason "unknown")."""
    converted, dropped, unknown = {}, {}, []
    for name, value in state.items():
        target = None
        if name in RESHAPED:
            target, convert = RESHAPED[name]
            value = convert(value, num_visual_positions)
        else:
            for prefix, ours in RENAMED:
                if name.startswith(prefix):
                    target = ours + name[len(prefix):]
                    break
        if target is not None:
            converted[target] = value
            if target in ADDED:
                added_name, added_value = ADDED[target]
                converted[added_name] = added_value.clone()
            continue
        reason = next((why for pattern, why in DROPPED if pattern.match(name)), None)
        if reason is None:
            if not skip_unknown:
                unknown.append(name)
                continue
            reason = "unknown to the converter (--skip-unknown)"
        dropped[name] = reason
    if unknown:
        raise ValueError(
            f"{len(unknown)} entries of the checkpoint are unknown to the converter: "
            f"{unknown[:20]}{' ...' if len(unknown) > 20 else ''}. Is it the authors' "
            "FashionViL pre-training checkpoint? --skip-unknown drops (and reports) them"
        )
    if not converted:
        raise ValueError("nothing in the checkpoint is a FashionViL weight of the authors' "
                         "model (expected names such as model.bert.encoder.layer.0...)")
    return converted, dropped


def _count(state, pattern):
    """1 + the largest index that fills ``pattern``'s ``{}`` in a name of ``state``."""
    regex = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)"))
    found = [int(m.group(1)) for name in state for m in [regex.match(name)] if m]
    return max(found) + 1 if found else 0


def _tokenizer_architecture(state, image_size):
    """Our ``fashionvil_image_tokenizer`` config for their VQ-VAE encoder entries ``state``
    (names without prefix), read from the entries' names and shapes."""
    needed = ("encoder.conv_in.weight", "encoder.down.0.block.0.conv1.weight",
              "encoder.conv_out.weight", "quant_conv.weight", "quantize.embedding.weight")
    missing = [name for name in needed if name not in state]
    if missing:
        raise ValueError(f"not the authors' VQ-VAE encoder: no {missing[0]} (entries such as "
                         f"{needed} expected)")
    base = state["encoder.conv_in.weight"].shape[0]
    levels = _count(state, "encoder.down.{}.")
    widths = [state[f"encoder.down.{level}.block.0.conv1.weight"].shape[0]
              for level in range(levels)]
    if any(width % base for width in widths):
        raise ValueError(f"level widths {widths} are not multiples of conv_in's {base}")
    codebook = state["quantize.embedding.weight"]
    return {
        "image_size": int(image_size), "stride": 2 ** (levels - 1), "base_channels": base,
        "channel_multipliers": [width // base for width in widths],
        "num_res_blocks": _count(state, "encoder.down.0.block.{}."),
        "bottleneck_attention": "encoder.mid.attn_1.q.weight" in state,
        "attention_levels": [level for level in range(levels)
                             if f"encoder.down.{level}.attn.0.q.weight" in state],
        "downsample_padding": "asymmetric", "norm_groups": AUTHORS_NORM_GROUPS,
        "encoder_out_channels": state["encoder.conv_out.weight"].shape[0],
        "latent_dim": codebook.shape[1], "codebook_size": codebook.shape[0],
        "with_decoder": False, "perceptual": {"enabled": False},
    }


def _their_encoder_modules(architecture):
    """Their encoder's parameterised modules in forward order (names without "encoder.")."""
    names = ["conv_in"]
    for level in range(len(architecture["channel_multipliers"])):
        for block in range(architecture["num_res_blocks"]):
            names.append(f"down.{level}.block.{block}")
            if level in architecture["attention_levels"]:
                names.append(f"down.{level}.attn.{block}")
        if level < len(architecture["channel_multipliers"]) - 1:
            names.append(f"down.{level}.downsample.conv")
    names.append("mid.block_1")
    if architecture["bottleneck_attention"]:
        names.append("mid.attn_1")
    return names + ["mid.block_2", "norm_out", "conv_out"]


def _module_entries(theirs, ours, module):
    """{our entry name: their entry name, or a tuple of names to concatenate} of one module."""
    if isinstance(module, ResidualBlock):
        pairs = {"body.0": "norm1", "body.2": "conv1", "body.3": "norm2", "body.5": "conv2"}
        if not isinstance(module.shortcut, torch.nn.Identity):
            pairs["shortcut"] = "nin_shortcut"
    elif isinstance(module, SelfAttentionBlock):
        # Our fused q/k/v conv holds their three convs stacked along the output channels.
        return {f"{ours}.norm.{p}": f"{theirs}.norm.{p}" for p in ("weight", "bias")} | {
            f"{ours}.qkv.{p}": tuple(f"{theirs}.{x}.{p}" for x in "qkv")
            for p in ("weight", "bias")} | {
            f"{ours}.proj.{p}": f"{theirs}.proj_out.{p}" for p in ("weight", "bias")}
    elif isinstance(module, torch.nn.Sequential):  # the asymmetric downsample (pad, conv)
        pairs = {"1": ""}
    else:  # Conv2d, GroupNorm
        pairs = {"": ""}
    return {f"{ours}{'.' + our if our else ''}.{p}": f"{theirs}{'.' + their if their else ''}.{p}"
            for our, their in pairs.items() for p in ("weight", "bias")}


def convert_tokenizer_state(state, image_size=224):
    """(our tokenizer's state dict, its ``fashionvil_image_tokenizer`` config) of the authors'
    VQ-VAE encoder entries ``state`` (``encoder.*``, ``quant_conv.*``, ``quantize.*``).
    Every entry is used; one left over is an error naming it."""
    architecture = _tokenizer_architecture(state, image_size)
    config = OmegaConf.merge(OmegaConf.load(TOKENIZER_DEFAULTS).model_config[TOKENIZER_NAME],
                             architecture)
    tokenizer = ImageTokenizer(config)
    tokenizer.build()
    parameterised = [(str(index), module) for index, module in enumerate(tokenizer.encoder)
                     if any(True for _ in module.parameters())]
    theirs = _their_encoder_modules(architecture)
    if len(theirs) != len(parameterised):
        raise ValueError(f"their encoder has {len(theirs)} layers with weights, the "
                         f"architecture read from it {len(parameterised)}")
    entries = {"pre_quantization.weight": "quant_conv.weight",
               "pre_quantization.bias": "quant_conv.bias",
               "quantizer.codebook": "quantize.embedding.weight",
               "quantizer.cluster_size": "quantize.embedding.cluster_size",
               "quantizer.embed_sum": "quantize.embedding.embed_avg"}
    for (index, module), name in zip(parameterised, theirs):
        entries.update(_module_entries(f"encoder.{name}", f"encoder.{index}", module))
    converted, used = {}, set()
    for ours, source in entries.items():
        names = source if isinstance(source, tuple) else (source,)
        absent = [name for name in names if name not in state]
        if absent:
            raise ValueError(f"the authors' VQ-VAE entry {absent[0]} is missing (needed for "
                             f"our {ours})")
        converted[ours] = torch.cat([state[name] for name in names]).clone()
        used.update(names)
    converted["quantizer.initialized"] = torch.tensor(True)
    left = sorted(set(state) - used)
    if left:
        raise ValueError(f"{len(left)} entries of the VQ-VAE are unknown to the converter: "
                         f"{left[:20]}")
    tokenizer.load_state_dict(converted)  # shapes and names, checked against the built model
    return converted, OmegaConf.to_container(config)


def convert_file(source, out=None, image_size=224, skip_unknown=False, allow_unsafe=False,
                 tokenizer_out=None):
    """Reads ``source`` (their FashionViL checkpoint, or with ``out`` None their VQ-VAE
    encoder alone), converts it, then writes the model to ``out`` (``{"model": state,
    "conversion": report}``) and their tokenizer to ``tokenizer_out`` (what
    ``load_image_tokenizer`` reads), each atomically; nothing is written if a conversion
    fails. Returns the report."""
    checkpoint = read_checkpoint(source, allow_unsafe=allow_unsafe)
    state = model_state_from_checkpoint(checkpoint, source)
    report = {"source": str(source), "image_size": int(image_size)}
    writes = []
    if out is not None:
        converted, dropped = convert_state(state, grid_side(image_size) ** 2, skip_unknown)
        report.update(converted=len(converted), dropped=dropped)
        writes.append(({"model": converted, "conversion": report}, out))
        # Only their VQ-VAE's entries go on to the tokenizer.
        state = {name[len(TOKENIZER_PREFIX):]: value for name, value in state.items()
                 if name.startswith(TOKENIZER_PREFIX)}
        if tokenizer_out is not None and not state:
            raise ValueError(f"{source} holds no {TOKENIZER_PREFIX}* entries (their VQ-VAE): "
                             "convert their separate VQ-VAE file with --vqvae")
    if tokenizer_out is not None:
        tokenizer_state, config = convert_tokenizer_state(state, image_size)
        report["tokenizer_entries"] = len(tokenizer_state)
        writes.append(({"model": tokenizer_state,
                        "config": {"model_config": {TOKENIZER_NAME: config}},
                        "conversion": {"source": str(source), "image_size": int(image_size)}},
                       tokenizer_out))
    for content, path in writes:
        save_atomic(content, path)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mmf_fashionvil.convert",
        description="Convert the authors' FashionViL checkpoint (for "
                    "checkpoint.resume_pretrained) and their VQ-VAE encoder (for "
                    "heads.mpfc.tokenizer_checkpoint)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="their fashionvil_final.pth (needs --out)")
    source.add_argument("--vqvae", help="their VQ-VAE encoder alone, e.g. "
                        "vqvae_ema_pp_224_7x7_encoder_fashionall.pth (needs --tokenizer-out)")
    parser.add_argument("--out", help="the converted FashionViL checkpoint to write")
    parser.add_argument("--tokenizer-out", help="the converted image tokenizer to write (from "
                        "--vqvae, or from the model.image_tokenizer entries of --checkpoint)")
    parser.add_argument("--image-size", type=int, default=224,
                        help="largest input side of the runs (sets the visual positions kept "
                             "and the tokenizer's nominal size)")
    parser.add_argument("--skip-unknown", action="store_true",
                        help="drop (and report) entries the converter does not know")
    parser.add_argument("--allow-unsafe-load", action="store_true",
                        help="load a checkpoint that pickles objects (only a file you trust)")
    args = parser.parse_args(argv)
    if args.checkpoint and not args.out:
        parser.error("--checkpoint needs --out")
    if args.vqvae and (args.out or not args.tokenizer_out):
        parser.error("--vqvae needs --tokenizer-out (and no --out)")
    try:
        report = convert_file(args.checkpoint or args.vqvae, args.out, args.image_size,
                              args.skip_unknown, args.allow_unsafe_load, args.tokenizer_out)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.out:
        print(f"{args.out}: {report['converted']} entries from {args.checkpoint}")
        for name, reason in report["dropped"].items():
            if not (args.tokenizer_out and name.startswith(TOKENIZER_PREFIX)):
                print(f"  dropped {name}: {reason}")
    if args.tokenizer_out:
        print(f"{args.tokenizer_out}: the image tokenizer, {report['tokenizer_entries']} "
              f"entries from {args.checkpoint or args.vqvae}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
