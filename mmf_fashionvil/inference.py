"""The trained model, ready to embed and match: ``load(checkpoint)`` -> :class:`FashionViLInference`.

``checkpoint`` is a trainer checkpoint (``current.ckpt``, ``best.ckpt``,
``models/model_<update>.ckpt``; read with ``torch.load(weights_only=True)``) or a folder
written by ``python -m mmf_fashionvil.tools.export`` (``model.safetensors``, ``config.json``,
``vocab.txt``; no pickle). Images and texts go through the same eval image transform and
tokenizer as the checkpoint's run (``dataset_config.<datasets>.processors``; the tokenizer
never draws MLM masks), so the embeddings equal those of the run's evaluation::

    import mmf_fashionvil
    fv = mmf_fashionvil.load("save/xmr/best.ckpt")
    images = fv.encode_images(["a.jpg", "b.jpg"])      # [2, D], scaled and L2-normalised
    texts = fv.encode_texts(["black leather jacket"])  # [1, D]
    scores = texts @ images.t()                        # what retrieval ranks by

How the model is rebuilt: from the run's own ``model_config.fashionvil``, without the tasks
that need training-only assets (``mpfc`` and its image tokenizer checkpoint) and without
loading any pretrained asset (``bert.pretrained`` / ``image_encoder.pretrained`` are set to
null: the checkpoint holds every weight). Every entry of the built model's state dict must
come from the checkpoint (else a ValueError names the missing keys). Sizes that the weights
fix are read from them (vocabulary, width, depth, feed-forward width, positions, the PAC /
SCR / OCIR head sizes), so ``bert.vocab_file`` and ``heads.pac.attributes_file`` need not
exist any more.

Limitation (runs with ``bert.pretrained`` set): the BERT architecture then came from that
checkpoint's ``config.json``. It is read again from there when ``bert.pretrained`` is a
local folder that still exists, or a hub name in the local Hugging Face cache (never
downloaded). Otherwise the shapes of the weights give everything but the number of
attention heads, taken as hidden_size / 64 (exact for Google's BERTs: bert-base/large and
the small BERTs; a warning says so for other names, e.g. MiniLM's 384-wide 12-head layers
would get 6), with BERT's hidden_act and layer_norm_eps. Only the BertConfig fields of
``modeling.config.BERT_ARCHITECTURE_KEYS`` are carried over. ``tools/export.py`` writes the resolved architecture into the exported
``config.json``, so an exported folder never depends on the original BERT folder.
"""
import contextlib
import hashlib
import json
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor

import mmf_fashionvil.registry  # noqa: F401  (compat hook before mmf; registrations)

import torch  # noqa: E402
from mmf.common.registry import registry  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

from mmf_fashionvil.data.base import DEFAULT_MAX_IMAGE_PIXELS, load_image, to_rgb  # noqa: E402
from mmf_fashionvil.modeling.config import BERT_ARCHITECTURE_KEYS  # noqa: E402
from mmf_fashionvil.tasks import KNOWN_TASKS, parse_task_names  # noqa: E402
from mmf_fashionvil.training.checkpoints import (  # noqa: E402
    load_model_weights,
    model_state_from_checkpoint,
    plain_config,
    read_checkpoint,
)

MODEL_NAME = "fashionvil"
# The files of an exported folder (tools/export.py).
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_VOCAB = "vocab.txt"
# Top-level key of an exported config.json: where the folder came from.
EXPORT_INFO_KEY = "fashionvil_export"
# safetensors metadata key: {dropped name: kept name} of tied (shared-storage) weights.
TIED_WEIGHTS_KEY = "fashionvil_tied_weights"
# Tasks whose heads need assets that exist only for training (an image tokenizer file).
TRAINING_ONLY_TASKS = ("mpfc",)
# More items than this show a progress bar unless `progress` says otherwise.
PROGRESS_THRESHOLD = 1000
# Google's BERTs (bert-base/large, the small BERTs): attention heads of width 64.
GOOGLE_BERT = re.compile(
    r"^(google-bert/)?bert-(base|large)-(multilingual-)?(uncased|cased)$"
    r"|^google/bert_uncased_L-\d+_H-\d+_A-\d+$")
BERT_HEAD_WIDTH = 64


# --------------------------------------------------------------------------- helpers
def file_fingerprint(path):
    """First 16 hex digits of the sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def default_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _state_shape(state, key, dim=0):
    value = state.get(key)
    return None if value is None or value.dim() <= dim else int(value.shape[dim])


def _pretrained_bert_config(pretrained):
    """The BertConfig of ``bert.pretrained`` when it can be read without a download (a
    local folder's config.json, or a hub name in the local cache), else None."""
    from transformers import BertConfig

    path = os.path.expanduser(str(pretrained))
    if os.path.isfile(os.path.join(path, "config.json")):
        return BertConfig.from_json_file(os.path.join(path, "config.json"))
    if os.path.isdir(path) or os.path.isabs(path) or path.startswith((".", "~")):
        return None
    try:
        return BertConfig.from_pretrained(path, local_files_only=True)
    except Exception:
        return None


def bert_architecture(bert, state, source):
    """BertConfig fields of the run's transformer: the configured ones (runs without
    ``bert.pretrained``) or the pretrained checkpoint's (see the module doc), with every
    size the weights fix read from them."""
    from transformers import BertConfig

    pretrained = bert.get("pretrained")
    if pretrained is None:
        architecture = {k: bert[k] for k in BERT_ARCHITECTURE_KEYS if bert.get(k) is not None}
    else:
        pretrained_config = _pretrained_bert_config(pretrained)
        known = pretrained_config is not None
        pretrained_config = pretrained_config or BertConfig()
        architecture = {k: getattr(pretrained_config, k) for k in BERT_ARCHITECTURE_KEYS}
        hidden = _state_shape(state, "embeddings.word_embeddings.weight", 1)
        if not known and hidden is not None:
            architecture["num_attention_heads"] = max(1, hidden // BERT_HEAD_WIDTH)
            if not GOOGLE_BERT.match(str(pretrained)):
                warnings.warn(
                    f"{source}: the run's model_config.fashionvil.bert.pretrained={pretrained} "
                    "cannot be read any more (no config.json there, nor in the local Hugging "
                    "Face cache); its architecture is taken from the weights' shapes, with "
                    f"hidden_size / {BERT_HEAD_WIDTH} = {architecture['num_attention_heads']} "
                    "attention heads, hidden_act gelu and layer_norm_eps 1e-12 (BERT's). If "
                    "that BERT had other values, the embeddings are wrong: restore the folder, "
                    "or export the checkpoint (python -m mmf_fashionvil.tools.export) where it "
                    "exists", stacklevel=3)
    layers = {int(m.group(1)) for key in state
              for m in [re.match(r"encoder\.layer\.(\d+)\.", key)] if m}
    shapes = {
        "vocab_size": _state_shape(state, "embeddings.word_embeddings.weight"),
        "hidden_size": _state_shape(state, "embeddings.word_embeddings.weight", 1),
        "max_position_embeddings": _state_shape(state, "embeddings.position_embeddings.weight"),
        "type_vocab_size": _state_shape(state, "embeddings.token_type_embeddings.weight"),
        "intermediate_size": _state_shape(state, "encoder.layer.0.intermediate.dense.weight"),
        "num_hidden_layers": max(layers) + 1 if layers else None,
    }
    architecture.update({k: v for k, v in shapes.items() if v is not None})
    return architecture


def inference_model_config(model_config, state, source):
    """The model config to rebuild the trained model for inference (a plain dict): the
    run's ``model_config.fashionvil`` without training-only tasks and pretrained assets,
    with the sizes the weights fix (see the module doc)."""
    config = plain_config(model_config)
    tasks = parse_task_names(config.get("training_tasks") or ["itc"],
                             "model_config.fashionvil.training_tasks", known=KNOWN_TASKS)
    kept = [task for task in tasks if task not in TRAINING_ONLY_TASKS] or ["itc"]
    probabilities = config.get("task_probabilities")
    if isinstance(probabilities, list) and len(probabilities) == len(tasks):
        config["task_probabilities"] = [p for t, p in zip(tasks, probabilities) if t in kept]
    config["training_tasks"] = kept
    if config.get("evaluation_task") in TRAINING_ONLY_TASKS:
        config["evaluation_task"] = None
    bert = dict(config.get("bert") or {})
    architecture = bert_architecture(bert, state, source)
    bert.update(architecture, pretrained=None, vocab_file=None)
    config["bert"] = bert
    config["image_encoder"] = dict(config.get("image_encoder") or {}, pretrained=None)
    heads = config.setdefault("heads", {})
    heads["mpfc"] = dict(heads.get("mpfc") or {}, tokenizer_checkpoint=None)
    # Head sizes the weights fix (a missing head keeps the configured value).
    for head, key, weight in (("pac", "num_attributes", "pac_head.weight"),
                              ("scr", "num_classes", "scr_head.3.weight"),
                              ("ocir", "num_categories", "ocir_head.item_query.weight")):
        heads[head] = dict(heads.get(head) or {})
        size = _state_shape(state, weight)
        if size is not None:
            heads[head][key] = size
    config["model"] = MODEL_NAME
    return config


def build_inference_model(model_config, state, source):
    """The FashionViL of ``model_config`` (see :func:`inference_model_config`) with the
    weights ``state``; every state entry of the model must be there with its shape."""
    model_class = registry.get_model_class(MODEL_NAME)
    model = model_class(OmegaConf.create(model_config))
    model.build()
    report = load_model_weights(model, state, source, require_all=False)
    if report["missing"] or report["mismatched"]:
        missing, mismatched = report["missing"], report["mismatched"]
        raise ValueError(
            f"Checkpoint '{source}' does not fit the model its config describes: "
            f"{len(missing)} missing key(s) {missing[:20]}{' ...' if len(missing) > 20 else ''}"
            f", {len(mismatched)} of another shape {mismatched[:20]}"
        )
    return model.eval()


def dataset_name(config, source):
    names = [n.strip() for n in str(config.get("datasets") or "").split(",") if n.strip()]
    dataset_config = config.get("dataset_config") or {}
    for name in names:
        processors = (dataset_config.get(name) or {}).get("processors") or {}
        if processors.get("text_processor") and processors.get("eval_image_processor"):
            return name
    raise ValueError(f"{source}: the saved config names no dataset (datasets={names}) with "
                     "processors.text_processor and processors.eval_image_processor in "
                     "dataset_config: cannot tell how the run read images and texts")


def build_processors(config, source, base_dir=None):
    """(text processor, eval image processor, max image pixels) of the run's dataset; a
    relative vocab path is taken relative to ``base_dir`` when given (exported folders)."""
    name = dataset_name(config, source)
    dataset_config = config.dataset_config[name]
    processors = dataset_config.processors

    def build(kind, overrides=None):
        spec = plain_config(processors[kind])
        processor_class = registry.get_processor_class(spec.get("type"))
        if processor_class is None:
            raise ValueError(f"{source}: dataset_config.{name}.processors.{kind}.type="
                             f"{spec.get('type')} is not a registered processor")
        params = dict(spec.get("params") or {}, **(overrides or {}))
        return processor_class(OmegaConf.create(params))

    text_params = plain_config(processors.text_processor.get("params") or {})
    overrides = {"mlm_mask_prob": 0.0}
    vocab = text_params.get("vocab")
    if base_dir is not None and vocab is not None and not os.path.isabs(str(vocab)) \
            and os.path.isfile(os.path.join(base_dir, str(vocab))):
        overrides["vocab"] = os.path.join(base_dir, str(vocab))
    text = build("text_processor", overrides)
    image = build("eval_image_processor")
    max_pixels = int(dataset_config.get("max_image_pixels") or DEFAULT_MAX_IMAGE_PIXELS)
    return text, image, max_pixels


def read_weights(checkpoint):
    """(run config as a DictConfig, model state dict, path of the weights file, base folder
    for relative paths or None) of a trainer checkpoint or an exported folder."""
    checkpoint = os.fspath(checkpoint)
    if os.path.isdir(checkpoint):
        weights = os.path.join(checkpoint, EXPORT_WEIGHTS)
        config_file = os.path.join(checkpoint, EXPORT_CONFIG)
        absent = [p for p in (weights, config_file) if not os.path.isfile(p)]
        if absent:
            raise FileNotFoundError(
                f"'{checkpoint}' is a folder but not an exported model: {absent} missing "
                "(python -m mmf_fashionvil.tools.export CKPT --out DIR writes one; for a "
                "run's save_dir pass its best.ckpt or current.ckpt)")
        from safetensors import safe_open

        state = {}
        with safe_open(weights, framework="pt") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key)
            metadata = f.metadata() or {}
        for alias, kept in json.loads(metadata.get(TIED_WEIGHTS_KEY, "{}")).items():
            state[alias] = state[kept]
        with open(config_file, encoding="utf-8") as f:
            config = OmegaConf.create(json.load(f))
        return config, state, weights, checkpoint
    saved = read_checkpoint(checkpoint)
    state = model_state_from_checkpoint(saved, checkpoint)
    config = saved.get("config") if isinstance(saved, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"Checkpoint '{checkpoint}' holds no run config (key 'config'): "
                         "only checkpoints written by the fashionvil_trainer can be loaded")
    return OmegaConf.create(config), state, checkpoint, None


# --------------------------------------------------------------------------- the API
class FashionViLInference:
    """A trained FashionViL in eval mode with its run's image transform and tokenizer.

    Attributes: ``model`` (on ``device``, eval mode), ``device``, ``config`` (the run config
    saved with the weights), ``fingerprint`` (sha256 hex, first 16 digits, of the weights
    file's bytes: the checkpoint file, or an exported folder's model.safetensors), ``has_itm``
    (the model has an ITM head: :meth:`match` works), ``source`` (the path given to load).

    Every method returns float32 CPU tensors, computed without gradient in batches
    (``torch.autocast`` bf16 on CUDA), with a tqdm bar when ``progress`` is true (None: when
    there are more than 1000 items). Images are file paths (read as the datasets read them:
    RGB, transparency on white, the run's max_image_pixels; a bad file is a DataError naming
    it) or PIL images.
    """

    def __init__(self, model, config, device, fingerprint, text_processor, image_processor,
                 max_image_pixels, source):
        self.model = model
        self.config = config
        self.device = device
        self.fingerprint = fingerprint
        self.source = source
        self.text_processor = text_processor
        self.image_processor = image_processor
        self.max_image_pixels = max_image_pixels
        self.has_itm = getattr(model, "itm_head", None) is not None
        self.embedding_dim = model.embedding_dim
        vocab_rows = model.embeddings.word_embeddings.num_embeddings
        if getattr(text_processor, "vocab_size", 0) > vocab_rows:
            raise ValueError(
                f"{source}: the text processor's vocabulary {text_processor.vocab_file} has "
                f"{text_processor.vocab_size} tokens but the model's embedding table "
                f"{vocab_rows} rows: it is not the vocabulary the model was trained with")

    def __repr__(self):
        return (f"FashionViLInference({self.source!r}, device={self.device}, "
                f"fingerprint={self.fingerprint}, dim={self.embedding_dim}, "
                f"has_itm={self.has_itm})")

    # ------------------------------------------------------------------ inputs
    def image_tensor(self, image):
        """The model input [3, H, W] of one image (a path or a PIL image)."""
        if isinstance(image, Image.Image):
            image = to_rgb(image)
        elif isinstance(image, (str, os.PathLike)):
            image = load_image(os.fspath(image), self.max_image_pixels)
        else:
            raise TypeError(f"an image must be a file path or a PIL image, got "
                            f"{type(image).__name__}")
        return self.image_processor(image)

    def text_tensors(self, texts):
        """(input_ids [B, L], input_mask [B, L]) of a list of strings."""
        fields = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"a text must be a str, got {type(text).__name__}: {text!r}")
            fields.append(self.text_processor({"text": text}))
        return (torch.stack([f["input_ids"] for f in fields]),
                torch.stack([f["input_mask"] for f in fields]))

    def _context(self):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if self.device.type == "cuda":
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        return stack

    def _batches(self, columns, batch_size, progress, description):
        """Yields one list per column of each batch, the images of the next batch being
        read and transformed in threads while the caller runs the model on this one.
        ``columns``: (items, "image" | "text") pairs of equal length."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        batch_size = int(batch_size)
        for items, kind in columns:
            if isinstance(items, (str, bytes, os.PathLike, Image.Image)):
                raise TypeError(f"{description}: pass a list of {kind}s, got one "
                                f"{type(items).__name__}")
        columns = [(list(items), kind) for items, kind in columns]
        lengths = {len(items) for items, _ in columns}
        if len(lengths) != 1:
            raise ValueError(f"{description}: the inputs differ in length "
                             f"({[len(items) for items, _ in columns]})")
        total = lengths.pop()
        show = total > PROGRESS_THRESHOLD if progress is None else bool(progress)
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=description, unit="item")
        workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1)
        pool = ThreadPoolExecutor(max_workers=workers) if any(
            kind == "image" for _, kind in columns) else None

        def submit(start):
            batch = []
            for items, kind in columns:
                chunk = items[start:start + batch_size]
                batch.append([pool.submit(self.image_tensor, item) for item in chunk]
                             if kind == "image" else chunk)
            return batch

        try:
            upcoming = submit(0) if total else None
            for start in range(0, total, batch_size):
                current = upcoming
                if start + batch_size < total:
                    upcoming = submit(start + batch_size)
                batch = []
                for (_, kind), chunk in zip(columns, current):
                    if kind == "image":
                        batch.append(torch.stack([future.result() for future in chunk])
                                     .to(self.device, non_blocking=True))
                    else:
                        ids, mask = self.text_tensors(chunk)
                        batch.append((ids.to(self.device), mask.to(self.device)))
                yield batch
                if bar is not None:
                    bar.update(min(batch_size, total - start))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()

    def _run(self, columns, batch_size, progress, description, compute, width):
        outputs = []
        with self._context():
            for batch in self._batches(columns, batch_size, progress, description):
                outputs.append(compute(*batch).float().cpu())
        if not outputs:
            return torch.zeros((0, width) if width else (0,), dtype=torch.float32)
        return torch.cat(outputs)

    # ----------------------------------------------------------------- outputs
    def encode_images(self, images, batch_size=32, progress=None):
        """[N, D] image embeddings ``model.encode_image(image)[1]`` (scaled, L2-normalised)."""
        return self._run([(images, "image")], batch_size, progress, "encode images",
                         lambda image: self.model.encode_image(image)[1], self.embedding_dim)

    def encode_texts(self, texts, batch_size=64, progress=None):
        """[N, D] text embeddings ``model.encode_text(input_ids, input_mask)[1]``."""
        return self._run([(texts, "text")], batch_size, progress, "encode texts",
                         lambda text: self.model.encode_text(*text)[1], self.embedding_dim)

    def compose(self, reference_images, modification_texts, batch_size=32, progress=None):
        """[N, D] composed (TGIR query) embeddings ``model.compose(text, image)`` of each
        reference image with its modification text; compare with :meth:`encode_images`."""
        return self._run([(reference_images, "image"), (modification_texts, "text")],
                         batch_size, progress, "compose",
                         lambda image, text: self.model.compose(*text, image),
                         self.embedding_dim)

    def match(self, texts, images, batch_size=32, progress=None):
        """[N] ITM match scores logit(match) - logit(no match) of (texts[i], images[i])
        (``model.itm_match_scores``); the checkpoint must have an ITM head."""
        if not self.has_itm:
            raise ValueError(
                f"Checkpoint '{self.source}' has no ITM head (its run trained "
                f"{list(self.model.training_tasks)} without itm and with "
                "heads.itm.rerank_top_k=0): match() needs a model pre-trained with ITM")

        def scores(text, image):
            visual_tokens, _ = self.model.encode_image(image)
            return self.model.itm_match_scores(*text, visual_tokens)

        return self._run([(texts, "text"), (images, "image")], batch_size, progress, "match",
                         scores, None)


def load(checkpoint, device=None):
    """The trained model of ``checkpoint`` (a trainer checkpoint file or an exported
    folder) on ``device`` (default: cuda when available, else cpu), ready to embed and
    match: see :class:`FashionViLInference` and the module doc."""
    source = os.fspath(checkpoint)
    config, state, weights_file, base_dir = read_weights(source)
    model_name = config.get("model")
    if model_name not in (None, MODEL_NAME):
        raise ValueError(f"Checkpoint '{source}' is of model '{model_name}', not "
                         f"'{MODEL_NAME}'")
    model_config = (config.get("model_config") or {}).get(MODEL_NAME)
    if model_config is None:
        raise ValueError(f"Checkpoint '{source}': its config has no model_config.{MODEL_NAME}")
    model = build_inference_model(inference_model_config(model_config, state, source),
                                  state, source)
    text_processor, image_processor, max_pixels = build_processors(config, source, base_dir)
    device = torch.device(device) if device is not None else default_device()
    return FashionViLInference(
        model.to(device), config, device, file_fingerprint(weights_file), text_processor,
        image_processor, max_pixels, source)


__all__ = ["FashionViLInference", "load", "file_fingerprint", "inference_model_config",
           "read_weights", "EXPORT_WEIGHTS", "EXPORT_CONFIG", "EXPORT_VOCAB",
           "EXPORT_INFO_KEY", "TIED_WEIGHTS_KEY"]
