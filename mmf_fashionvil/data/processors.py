"""Text and image processors, registered in MMF's processor registry.

Datasets build them from their config (``processors:`` section) through rc10's
``BaseDataset.init_processors``.
"""
import torch
from mmf.common.registry import registry
from mmf.datasets.processors.processors import BaseProcessor
from torchvision.transforms import v2 as T

from mmf_fashionvil.assets import resolve_vocab_file

# FashionGen statistics used by the authors (SPEC §9).
FASHION_MEAN = (0.4678, 0.4453, 0.4066)
FASHION_STD = (0.1222, 0.1215, 0.1438)


@registry.register_processor("fashionvil_text_tokenizer")
class TextTokenizer(BaseProcessor):
    """WordPiece tokenisation to fixed-length BERT inputs.

    Returns ``input_ids``, ``input_mask``, ``segment_ids`` ([CLS] text [SEP] pad)
    and ``word_ids`` (index of the word each token belongs to, -1 for special
    and padding tokens) which whole-word masking needs.
    """

    def __init__(self, config, *args, **kwargs):
        # transformers 5: `vocab=` takes the file; a `vocab_file=` kwarg is silently ignored.
        from transformers import BertTokenizer

        self.vocab_file = resolve_vocab_file(config.get("vocab", "bert-base-uncased"))
        self.max_seq_length = int(config.get("max_seq_length", 75))
        self.tokenizer = BertTokenizer(
            vocab=self.vocab_file, do_lower_case=config.get("do_lower_case", True)
        )

    @property
    def vocab_size(self):
        return len(self.tokenizer)

    def __call__(self, item):
        text = item["text"]
        encoding = self.tokenizer(
            text,
            max_length=self.max_seq_length,
            truncation=True,
            padding="max_length",
        )
        word_ids = [-1 if w is None else w for w in encoding.word_ids()]
        return {
            "input_ids": torch.tensor(encoding["input_ids"], dtype=torch.long),
            "input_mask": torch.tensor(encoding["attention_mask"], dtype=torch.long),
            "segment_ids": torch.zeros(self.max_seq_length, dtype=torch.long),
            "word_ids": torch.tensor(word_ids, dtype=torch.long),
        }


@registry.register_processor("fashionvil_image_transform")
class ImageTransform(BaseProcessor):
    """PIL image -> normalised tensor.

    ``train``: resize -> random crop -> horizontal flip (FashionGen recipe) or,
    with ``random_resized_crop: true``, random-resized crop (scale 0.8-1) + flip
    (FashionIQ/Polyvore recipe). ``eval``: resize -> centre crop.
    Randomness comes from torch's global RNG, which datasets seed per item.
    """

    def __init__(self, config, *args, **kwargs):
        mode = config.get("mode", "eval")
        if mode not in ("train", "eval"):
            raise ValueError(f"fashionvil_image_transform mode must be train|eval, got {mode}")
        size, crop = int(config.get("resize", 256)), int(config.get("crop", 224))
        mean = tuple(config.get("mean", FASHION_MEAN))
        std = tuple(config.get("std", FASHION_STD))
        if mode == "train" and config.get("random_resized_crop", False):
            geometry = [T.RandomResizedCrop(crop, scale=(0.8, 1.0), antialias=True)]
        elif mode == "train":
            geometry = [T.Resize(size, antialias=True), T.RandomCrop(crop)]
        else:
            geometry = [T.Resize(size, antialias=True), T.CenterCrop(crop)]
        flip = [T.RandomHorizontalFlip()] if mode == "train" else []
        self.transform = T.Compose(
            [T.ToImage(), *geometry, *flip, T.ToDtype(torch.float32, scale=True),
             T.Normalize(mean, std)]
        )
        self.mean, self.std = mean, std

    def __call__(self, image):
        return self.transform(image)
