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

Their MPFC target tokenizer (``model.image_tokenizer.*``, a VQ-VAE) is not converted: its
architecture is not ours (``modeling/image_tokenizer.py``) and our model keeps the tokenizer
outside its weights; the entries are reported as dropped.
"""
import argparse
import re
import sys

import torch

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
     "their VQ-VAE (MPFC targets): another architecture than ours, kept outside our weights"),
)


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


def convert_file(source, out, image_size=224, skip_unknown=False, allow_unsafe=False):
    """Reads ``source``, converts it and writes ``{"model": state, "conversion": report}`` to
    ``out`` atomically; returns the report."""
    checkpoint = read_checkpoint(source, allow_unsafe=allow_unsafe)
    state = model_state_from_checkpoint(checkpoint, source)
    converted, dropped = convert_state(state, grid_side(image_size) ** 2, skip_unknown)
    report = {"source": str(source), "image_size": int(image_size),
              "converted": len(converted), "dropped": dropped}
    save_atomic({"model": converted, "conversion": report}, out)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mmf_fashionvil.convert",
        description="Convert the authors' FashionViL checkpoint for checkpoint.resume_pretrained")
    parser.add_argument("--checkpoint", required=True, help="their fashionvil_final.pth")
    parser.add_argument("--out", required=True, help="the converted checkpoint to write")
    parser.add_argument("--image-size", type=int, default=224,
                        help="largest input side of the runs (sets the visual positions kept)")
    parser.add_argument("--skip-unknown", action="store_true",
                        help="drop (and report) entries the converter does not know")
    parser.add_argument("--allow-unsafe-load", action="store_true",
                        help="load a checkpoint that pickles objects (only a file you trust)")
    args = parser.parse_args(argv)
    try:
        report = convert_file(args.checkpoint, args.out, args.image_size, args.skip_unknown,
                              args.allow_unsafe_load)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: {report['converted']} entries from {args.checkpoint}")
    for name, reason in report["dropped"].items():
        print(f"  dropped {name}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
