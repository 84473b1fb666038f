"""Text and image processors, registered in MMF's processor registry.

Datasets build them from their config (``processors:`` section) through rc10's
``BaseDataset.init_processors``.
"""
import torch
from mmf.common.registry import registry
from mmf.datasets.processors.processors import BaseProcessor
from omegaconf import ListConfig
from torchvision.transforms import v2 as T

from mmf_fashionvil.assets import resolve_vocab_file
from mmf_fashionvil.modeling.masking import whole_word_mask

# FashionGen statistics used by the authors (SPEC §9).
FASHION_MEAN = (0.4678, 0.4453, 0.4066)
FASHION_STD = (0.1222, 0.1215, 0.1438)
# Registry key of the (mean, std) of the images a built dataset feeds the model (MPFC undoes
# the normalisation before tokenizing); registered by the dataset builders.
IMAGE_NORMALIZATION_KEY = "fashionvil_image_normalization"


def image_normalization(processor_params):
    """(mean, std) of a ``fashionvil_image_transform`` with these params."""
    params = processor_params or {}
    return tuple(params.get("mean", FASHION_MEAN)), tuple(params.get("std", FASHION_STD))


def registered_image_normalization():
    """(mean, std) of the images of the dataset built in this process (the dataset's image
    processor is the one source), the transform's defaults when none was built."""
    registered = registry.get(IMAGE_NORMALIZATION_KEY, no_warning=True)
    return registered if registered is not None else image_normalization(None)


@registry.register_processor("fashionvil_text_tokenizer")
class TextTokenizer(BaseProcessor):
    """WordPiece tokenisation to fixed-length BERT inputs.

    Returns ``input_ids``, ``input_mask``, ``segment_ids`` ([CLS] text [SEP] pad)
    and ``word_ids`` (index of the word each token belongs to, -1 for special
    and padding tokens). With ``mlm_mask_prob`` > 0 also the MLM inputs
    ``masked_input_ids`` and ``lm_label_ids`` (-100 where not masked): whole-word
    masks (masking.py) drawn from torch's global RNG, which datasets seed per item,
    so an item's masks are the same in every run and after a resume.
    """

    def __init__(self, config, *args, **kwargs):
        # transformers 5: `vocab=` takes the file; a `vocab_file=` kwarg is silently ignored.
        from transformers import BertTokenizer

        self.vocab_file = resolve_vocab_file(config.get("vocab", "bert-base-uncased"))
        self.max_seq_length = int(config.get("max_seq_length", 75))
        self.mlm_mask_prob = float(config.get("mlm_mask_prob") or 0.0)
        self.tokenizer = BertTokenizer(
            vocab=self.vocab_file, do_lower_case=config.get("do_lower_case", True)
        )
        if self.mlm_mask_prob > 0:
            # The tokenizer would add a missing special token past the model's vocabulary.
            with open(self.vocab_file, encoding="utf-8") as f:
                vocab = set(f.read().splitlines())
            missing = [token for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
                       if token not in vocab]
            if missing:
                raise ValueError(f"{self.vocab_file} has no {missing} token(s), which MLM "
                                 "masking (mlm_mask_prob) needs")

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
        fields = {
            "input_ids": torch.tensor(encoding["input_ids"], dtype=torch.long),
            "input_mask": torch.tensor(encoding["attention_mask"], dtype=torch.long),
            "segment_ids": torch.zeros(self.max_seq_length, dtype=torch.long),
            "word_ids": torch.tensor(word_ids, dtype=torch.long),
        }
        if self.mlm_mask_prob > 0:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
            fields["masked_input_ids"], fields["lm_label_ids"] = whole_word_mask(
                fields["input_ids"], fields["word_ids"], generator,
                mask_token_id=self.tokenizer.mask_token_id, vocab_size=self.vocab_size,
                special_ids=self.tokenizer.all_special_ids, mask_prob=self.mlm_mask_prob,
            )
        return fields


@registry.register_processor("fashionvil_image_transform")
class ImageTransform(BaseProcessor):
    """PIL image -> normalised tensor.

    ``train``: resize -> random crop -> horizontal flip (FashionGen recipe) or,
    with ``random_resized_crop: true``, random-resized crop (scale 0.8-1) + flip
    (FashionIQ/Polyvore recipe). ``eval``: resize -> centre crop.
    ``resize``: an int scales the shorter side to it (aspect ratio kept); [height, width]
    scales to exactly that size (aspect ratio not kept: the authors' FashionIQ evaluation
    uses [224, 224], so the crop of the same size cuts nothing off tall garments).
    Randomness comes from torch's global RNG, which datasets seed per item.
    """

    def __init__(self, config, *args, **kwargs):
        mode = config.get("mode", "eval")
        if mode not in ("train", "eval"):
            raise ValueError(f"fashionvil_image_transform mode must be train|eval, got {mode}")
        size, crop = config.get("resize", 256), int(config.get("crop", 224))
        if not isinstance(size, int):
            size = tuple(size) if isinstance(size, (list, tuple, ListConfig)) else ()
            if len(size) != 2 or not all(isinstance(side, int) for side in size):
                raise ValueError(f"fashionvil_image_transform resize must be an int or "
                                 f"[height, width], got {config.get('resize')}")
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
