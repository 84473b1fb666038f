"""Exports a trainer checkpoint as a folder that ``mmf_fashionvil.load`` reads without pickle:

    python -m mmf_fashionvil.tools.export save/xmr/best.ckpt --out models/xmr [--overwrite]

writes
- ``model.safetensors``: the state dict of the inference model (``mmf_fashionvil.inference``:
  the run's model without training-only heads, e.g. MPFC's); tied weights (the MLM decoder
  shares the word embeddings) are stored once, the other names listed in the file's metadata
  (``fashionvil_tied_weights``) and restored by the loader;
- ``config.json``: the checkpoint's run config as plain JSON, with ``model_config.fashionvil``
  replaced by the resolved inference config (the BERT architecture written out,
  ``bert.pretrained`` / ``image_encoder.pretrained`` / ``bert.vocab_file`` null, head sizes
  from the weights: the folder depends on no pretrained asset), the text processor's
  ``vocab`` set to ``vocab.txt`` (relative: the folder can be moved) and a
  ``fashionvil_export`` entry naming the source checkpoint and its fingerprint;
- ``vocab.txt``: a copy of the text processor's WordPiece vocabulary.

An ``--out`` folder that exists and is not empty is refused; ``--overwrite`` replaces an
earlier export there (a folder holding other files is still refused).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile


def tied_aliases(state):
    """{name: kept name} for the entries of ``state`` that are the same tensor (same
    storage, offset, shape and stride) as an earlier one; safetensors stores shared storage
    once. Other storage overlaps (partial views) are returned as a separate list, to clone."""
    seen, aliases, overlapping, storages = {}, {}, [], {}
    for name, tensor in state.items():
        storage = tensor.untyped_storage().data_ptr()
        view = (storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(),
                tensor.dtype)
        if view in seen:
            aliases[name] = seen[view]
            continue
        seen[view] = name
        if storage in storages and tensor.numel():
            overlapping.append(name)
        storages.setdefault(storage, name)
    return aliases, overlapping


# The files of an export (mmf_fashionvil.inference's EXPORT_* names; checked below).
EXPORT_NAMES = ("model.safetensors", "config.json", "vocab.txt")
STAGING_PREFIX = ".export-"


def check_out_folder(out, overwrite):
    """``out`` as an absolute path, refused (FileExistsError) when it exists and is not
    empty, unless ``overwrite`` and it holds nothing but an earlier export."""
    out = os.path.abspath(os.path.expanduser(os.fspath(out)))
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out} exists and is not a folder")
    existing = sorted(os.listdir(out)) if os.path.isdir(out) else []
    if existing and not overwrite:
        raise FileExistsError(f"--out folder {out} exists and is not empty ({existing[:5]}"
                              f"{' ...' if len(existing) > 5 else ''}): choose a new folder, "
                              "or pass --overwrite to replace an earlier export there")
    # .export-*: the staging folder of an export that was killed.
    others = [name for name in existing
              if name not in EXPORT_NAMES and not name.startswith(STAGING_PREFIX)]
    if others:
        raise FileExistsError(f"--out folder {out} holds files that are not an export's "
                              f"({others[:5]}): --overwrite replaces only an earlier export")
    for name in existing:
        if name.startswith(STAGING_PREFIX):
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    return out


def export(checkpoint, out, overwrite=False):
    """Writes the export folder ``out`` of ``checkpoint`` (see the module doc); returns the
    loaded :class:`~mmf_fashionvil.inference.FashionViLInference` (on the CPU)."""
    out = check_out_folder(out, overwrite)  # before the slow imports
    from safetensors.torch import save_file

    from mmf_fashionvil import inference
    from mmf_fashionvil.training.checkpoints import plain_config

    names = (inference.EXPORT_WEIGHTS, inference.EXPORT_CONFIG, inference.EXPORT_VOCAB)
    assert names == EXPORT_NAMES, (names, EXPORT_NAMES)
    if os.path.isdir(os.fspath(checkpoint)):
        raise ValueError(f"{checkpoint} is a folder: export takes a checkpoint file "
                         "(current.ckpt, best.ckpt, models/model_<update>.ckpt)")

    loaded = inference.load(checkpoint, device="cpu")
    state = {name: tensor.detach().cpu() for name, tensor in loaded.model.state_dict().items()}
    aliases, overlapping = tied_aliases(state)
    tensors = {name: (tensor.clone() if name in overlapping else tensor).contiguous()
               for name, tensor in state.items() if name not in aliases}
    # One metadata entry: safetensors writes several in a random order (a hash map), and the
    # same weights must give the same file (its hash is the fingerprint).
    metadata = {inference.TIED_WEIGHTS_KEY: json.dumps(aliases, sort_keys=True)}

    config = plain_config(loaded.config)
    # The config the inference model was built from (architecture resolved, no assets).
    model_config = plain_config(loaded.model.config)
    model_config.pop("model", None)
    config["model_config"][inference.MODEL_NAME] = model_config
    dataset = inference.dataset_name(loaded.config, checkpoint)
    text_params = config["dataset_config"][dataset]["processors"]["text_processor"]
    text_params.setdefault("params", {})["vocab"] = inference.EXPORT_VOCAB
    config[inference.EXPORT_INFO_KEY] = {
        "source_checkpoint": os.path.abspath(os.fspath(checkpoint)),
        "source_fingerprint": loaded.fingerprint,
        "dataset": dataset,
    }

    os.makedirs(out, exist_ok=True)
    # Each file is written to a temporary name, then renamed: an interrupted export leaves
    # no half-written file under an export's name.
    with tempfile.TemporaryDirectory(dir=out, prefix=STAGING_PREFIX) as staging:
        save_file(tensors, os.path.join(staging, inference.EXPORT_WEIGHTS), metadata=metadata)
        with open(os.path.join(staging, inference.EXPORT_CONFIG), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1, sort_keys=False)
            f.write("\n")
        shutil.copyfile(loaded.text_processor.vocab_file,
                        os.path.join(staging, inference.EXPORT_VOCAB))
        umask = os.umask(0)
        os.umask(umask)
        for name in names:
            os.chmod(os.path.join(staging, name), 0o666 & ~umask)
            os.replace(os.path.join(staging, name), os.path.join(out, name))
    return loaded


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mmf_fashionvil.tools.export",
        description="Export a fashionvil trainer checkpoint as model.safetensors + "
                    "config.json + vocab.txt, which mmf_fashionvil.load(DIR) reads.")
    parser.add_argument("checkpoint", help="current.ckpt, best.ckpt or models/model_N.ckpt")
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in --out")
    args = parser.parse_args(argv)
    try:
        loaded = export(args.checkpoint, args.out, overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    weights = os.path.join(os.path.abspath(args.out), "model.safetensors")
    from mmf_fashionvil.inference import file_fingerprint

    print(f"Exported {args.checkpoint} (fingerprint {loaded.fingerprint}) to {args.out}: "
          f"model.safetensors (fingerprint {file_fingerprint(weights)}), config.json, vocab.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
