"""A synthetic fashion catalog in the real datasets' pre-processed layout (SPEC §4.1, §5).

    python -m mmf_fashionvil.synthetic --out DIR [--seed N] [--products N] [--image-size PX]
                                       [--workers N]

Writes, deterministically from the seed (same arguments -> byte-identical files):

DIR/datasets/FashionGen/   {train,val}_info.json, {train,val}/<id>_<view>.png,
                           categories.json (synthetic-only helper: category/subcategory names
                           by ``category_id``/``subcategory_id``)
DIR/datasets/Fashion200k/  {train,test}_info.json, images/women/<category>/<sub>/<id>/<id>_<v>.jpeg
DIR/datasets/PolyvoreOutfits/
                           polyvore_item_metadata.json, images/<item_id>.jpg, train_info.json
                           (pre-training: one image per item of the disjoint train outfits),
                           {disjoint,nondisjoint}/{train,valid,test}.json (outfits),
                           ocir_{disjoint,nondisjoint}_{train,test}.json
DIR/datasets/FashionIQ/    captions/cap.{dress,shirt,toptee}.{train,val}.json,
                           image_splits/split.{dress,shirt,toptee}.{train,val}.json,
                           images/<asin>.png, image_attributes.json (synthetic-only helper:
                           asin -> attribute ids)
DIR/vocab/                 vocab.txt (WordPiece vocabulary covering every text),
                           tokenizer_config.json, pos_lexicon.json (word -> Penn tag of every
                           word the texts can contain, for
                           ``python -m mmf_fashionvil.attributes --tagger lexicon``)
DIR/catalog.json           manifest (seed, sizes, counts, attribute names, word lists), last.

``attributes_id`` everywhere indexes ``catalog.json["attributes"]`` (names "kind:value").
``--products`` is the number of FashionGen products; Fashion200k has about half as many,
Polyvore about as many items, FashionIQ about products/3 train triplets per category.

Images show what the text says: the silhouette is drawn from the (sub)category, sleeves,
neckline and length; the fill is the named colour with the pattern's texture (attached to the
garment, so it moves with it); views of one product differ in background shade, position,
scale, a small rotation and a horizontal flip. Polyvore outfits share a colour family and hold
at most one patterned item, so complementary-item retrieval is learnable.

A crashed run leaves a marker file and no catalog.json; rerunning into a previous (complete or
interrupted) catalog replaces it. Other non-empty folders are refused.
"""
import argparse
import functools
import json
import math
import multiprocessing
import random
import shutil
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

GENERATOR = "mmf_fashionvil.synthetic"
GENERATOR_VERSION = 2
DEFAULT_PRODUCTS = 600
DEFAULT_IMAGE_SIZE = 64
MIN_PRODUCTS = 5
MIN_IMAGE_SIZE = 16
MANIFEST = "catalog.json"
INCOMPLETE_MARKER = ".catalog_incomplete"
# Top-level entries this generator writes; only these are removed when a catalog is replaced.
OWNED_ENTRIES = ("datasets", "vocab", MANIFEST, INCOMPLETE_MARKER)

# ----------------------------------------------------------------------------- attributes
COLOURS = {
    "red": (214, 40, 40), "orange": (240, 140, 30), "yellow": (235, 210, 50),
    "green": (40, 160, 70), "blue": (40, 90, 220), "navy": (20, 30, 95),
    "purple": (130, 60, 170), "pink": (240, 130, 185), "brown": (120, 75, 40),
    "black": (25, 25, 25), "white": (246, 246, 246), "grey": (128, 128, 128),
}
# Outfits draw all their colours from one family (the learnable complementary-item rule).
COLOUR_FAMILIES = {
    "warm": ("red", "orange", "yellow", "pink", "brown"),
    "cool": ("green", "blue", "navy", "purple"),
    "neutral": ("black", "white", "grey"),
}
PATTERNS = ("plain", "striped", "dotted", "checked", "floral")
CATEGORIES = {  # category -> subcategories (FashionGen ids follow this order)
    "dress": ("mini", "midi", "maxi"),
    "shirt": ("blouse", "polo", "tunic"),
    "top": ("tee", "tank", "crop"),
    "pants": ("jeans", "trousers", "joggers", "shorts"),
    "skirt": ("pencil", "pleated", "flared"),
    "jacket": ("blazer", "bomber", "parka"),
    "shoes": ("sneakers", "boots", "heels"),
    "bag": ("tote", "clutch", "backpack"),
}
SUBCATEGORIES = tuple(s for subs in CATEGORIES.values() for s in subs)
PLURAL_CATEGORIES = ("pants", "shoes")  # "these ... are" in descriptions
SLEEVES = ("sleeveless", "short", "long")
NECKLINES = ("round", "square", "v")
LENGTHS = ("mini", "midi", "maxi")
# Which optional attributes a category has, and their allowed values.
SLEEVE_OPTIONS = {"dress": SLEEVES, "shirt": ("short", "long"), "top": SLEEVES}
NECKLINE_CATEGORIES = ("dress", "top")
LENGTH_CATEGORIES = ("skirt",)
ATTRIBUTE_KINDS = ("category", "subcategory", "colour", "pattern", "sleeve", "neckline", "length")
ATTRIBUTE_VALUES = {
    "category": tuple(CATEGORIES), "subcategory": SUBCATEGORIES, "colour": tuple(COLOURS),
    "pattern": PATTERNS, "sleeve": SLEEVES, "neckline": NECKLINES, "length": LENGTHS,
}
# The attribute list every "attributes_id" indexes (also written to catalog.json).
ATTRIBUTE_NAMES = tuple(f"{k}:{v}" for k in ATTRIBUTE_KINDS for v in ATTRIBUTE_VALUES[k])
ATTRIBUTE_INDEX = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}
# Every word that names a product attribute value in the texts.
ATTRIBUTE_WORDS = tuple(sorted({v for values in ATTRIBUTE_VALUES.values() for v in values}))

FASHION200K_CATEGORIES = ("dress", "jacket", "pants", "skirt", "top")
FASHIONIQ_CATEGORIES = {"dress": "dress", "shirt": "shirt", "toptee": "top"}
# Polyvore: coarse semantic category, and sparse fine-grained ids per subcategory (as in the
# real metadata, where category_id runs from 2 to 4500+ with gaps).
POLYVORE_SEMANTIC = {"dress": "all-body", "shirt": "tops", "top": "tops", "pants": "bottoms",
                     "skirt": "bottoms", "jacket": "outerwear", "shoes": "shoes", "bag": "bags"}
POLYVORE_CATEGORY_IDS = {
    "mini": 3, "midi": 4, "maxi": 5, "blouse": 11, "polo": 17, "tunic": 21, "tee": 236,
    "tank": 237, "crop": 243, "jeans": 25, "trousers": 27, "joggers": 28, "shorts": 29,
    "pencil": 3114, "pleated": 3115, "flared": 3236, "blazer": 251, "bomber": 252, "parka": 262,
    "sneakers": 4454, "boots": 4458, "heels": 4495, "tote": 4518, "clutch": 4519,
    "backpack": 4520,
}
# Outfit templates; "upper"/"lower" pick one of their categories.
SLOT_CATEGORIES = {"upper": ("shirt", "top"), "lower": ("pants", "skirt")}
OUTFIT_TEMPLATES = (
    ("upper", "lower", "shoes", "bag"),
    ("dress", "shoes", "bag"),
    ("dress", "jacket", "shoes"),
    ("upper", "lower", "jacket", "shoes"),
)

# ----------------------------------------------------------------------------- words
# Sentences mixed into descriptions; mostly pronouns, verbs, adverbs, prepositions and
# determiners, so that a noun/adjective miner keeps the attribute words (plus GENERIC_WORDS).
FILLER_SENTENCES = (
    "you will love it",
    "wear it again and again",
    "it fits so well",
    "simply wear it and go",
    "designed to be worn often",
    "buy it now",
    "made to last",
    "this is a perfect item for everyday wearing",
    "a lovely piece that you can wear anywhere",
    "it really suits you",
    "just what you need",
    "try it on",
)
# Penn tags of every word the templates can emit (the attribute miner's lexicon tagger).
_FILLER_TAGS = {
    "a": "DT", "again": "RB", "and": "CC", "anywhere": "RB", "be": "VB", "buy": "VB",
    "can": "MD", "comes": "VBZ", "designed": "VBN", "fits": "VBZ", "for": "IN", "go": "VB",
    "has": "VBZ", "in": "IN", "instead": "RB", "is": "VBZ", "it": "PRP", "just": "RB",
    "last": "VB", "made": "VBN", "make": "VB", "no": "DT", "now": "RB", "of": "IN", "on": "RP",
    "often": "RB", "really": "RB", "simply": "RB", "so": "RB", "suits": "VBZ", "that": "WDT",
    "this": "DT", "to": "TO", "try": "VB", "wear": "VB", "wearing": "VBG", "well": "RB",
    "what": "WP", "will": "MD", "with": "IN", "worn": "VBN", "you": "PRP", "need": "VBP",
    "cut": "VBN", "shown": "VBN", "love": "VB", "these": "DT", "are": "VBP", "come": "VBP",
}
# Nouns/adjectives of the texts that are not attribute values (a POS miner keeps these too,
# as it keeps generic words like "item" in real data).
_GENERIC_TAGS = {
    "perfect": "JJ", "item": "NN", "everyday": "JJ", "lovely": "JJ", "piece": "NN",
    "pattern": "NN", "print": "NN", "neckline": "NN", "sleeves": "NNS", "colour": "NN",
    "length": "NN",
}
_ATTRIBUTE_TAGS = {
    **{w: "JJ" for w in COLOURS}, **{w: "JJ" for w in PATTERNS},
    **{w: "JJ" for w in SLEEVES + NECKLINES[:2] + LENGTHS}, "v": "NN",
    "dress": "NN", "shirt": "NN", "top": "NN", "pants": "NNS", "skirt": "NN", "jacket": "NN",
    "shoes": "NNS", "bag": "NN", "blouse": "NN", "polo": "NN", "tunic": "NN", "tee": "NN",
    "tank": "NN", "crop": "NN", "jeans": "NNS", "trousers": "NNS", "joggers": "NNS",
    "shorts": "NNS", "pencil": "NN", "pleated": "JJ", "flared": "JJ", "blazer": "NN",
    "bomber": "NN", "parka": "NN", "sneakers": "NNS", "boots": "NNS", "heels": "NNS",
    "tote": "NN", "clutch": "NN", "backpack": "NN",
}
WORD_TAGS = {**_FILLER_TAGS, **_GENERIC_TAGS, **_ATTRIBUTE_TAGS}
GENERIC_WORDS = tuple(sorted(_GENERIC_TAGS))
FILLER_WORDS = tuple(sorted(_FILLER_TAGS))
PUNCTUATION = (".", ",")
# Words left out of vocab.txt so WordPiece must split them (stem + "##suffix").
WORDPIECE_SPLITS = {"sleeves": ("sleeve", "##s"), "designed": ("design", "##ed"),
                    "wearing": ("wear", "##ing")}
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class Product(NamedTuple):
    category: str
    subcategory: str
    colour: str
    pattern: str
    sleeve: Optional[str] = None
    neckline: Optional[str] = None
    length: Optional[str] = None

    def attribute_ids(self) -> List[int]:
        """Indices into ATTRIBUTE_NAMES of the attributes this product has."""
        return sorted(ATTRIBUTE_INDEX[f"{k}:{v}"] for k, v in zip(self._fields, self) if v)


def _rng(seed: int, *key) -> random.Random:
    """An independent generator per (seed, key): a string seed is hashed with SHA-512, so
    items do not depend on generation order (streaming, parallel rendering)."""
    return random.Random("/".join(map(str, (seed,) + key)))


def sample_product(rng: random.Random, category: str, colours: Sequence[str] = tuple(COLOURS),
                   patterned: Optional[bool] = None) -> Product:
    """Random attributes of a ``category`` product. ``patterned``: None = any pattern
    (plain ~40%), True = a non-plain pattern, False = plain."""
    subcategory = rng.choice(CATEGORIES[category])
    if patterned is None:
        pattern = "plain" if rng.random() < 0.4 else rng.choice(PATTERNS[1:])
    else:
        pattern = rng.choice(PATTERNS[1:]) if patterned else "plain"
    return Product(
        category, subcategory, rng.choice(colours), pattern,
        sleeve=rng.choice(_sleeve_options(category, subcategory)) if category in SLEEVE_OPTIONS else None,
        neckline=rng.choice(NECKLINES) if category in NECKLINE_CATEGORIES else None,
        length=rng.choice(LENGTHS) if category in LENGTH_CATEGORIES else None,
    )


def _sleeve_options(category, subcategory):
    return ("sleeveless",) if subcategory == "tank" else SLEEVE_OPTIONS[category]


# ----------------------------------------------------------------------------- texts
def _pattern_phrase(product, is_, rng):
    if product.pattern == "plain":
        return rng.choice((" in a plain colour", f" and {is_} plain"))
    return rng.choice((f" with a {product.pattern} pattern", f" with a {product.pattern} print"))


def _detail_phrases(product, rng):
    phrases = []
    if product.sleeve == "sleeveless":
        phrases.append("is sleeveless")
    elif product.sleeve:
        phrases.append(f"has {product.sleeve} sleeves")
    if product.neckline:
        phrases.append(f"has a {product.neckline} neckline")
    if product.length:
        phrases.append(f"is cut to a {product.length} length")
    rng.shuffle(phrases)
    return phrases


def product_title(product: Product, rng: random.Random) -> str:
    words = [product.colour]
    if product.pattern != "plain" or rng.random() < 0.3:
        words.append(product.pattern)
    if product.length:
        words.append(product.length)
    if product.sleeve == "sleeveless" and rng.random() < 0.5:
        words.append("sleeveless")
    words += [product.subcategory, product.category]
    return " ".join(words)


def product_description(product: Product, rng: random.Random) -> str:
    """Two or three sentences: the attributes in one of several templates, plus filler."""
    p = product
    plural = p.category in PLURAL_CATEGORIES
    this, is_, comes, a = ("these", "are", "come", "") if plural else ("this", "is", "comes", "a ")
    main = rng.choice((
        f"{this} {p.subcategory} {p.category} {comes} in {p.colour}{_pattern_phrase(p, is_, rng)}",
        f"{a}{p.pattern} {p.subcategory} {p.category} in {p.colour}",
        f"{p.colour} and {p.pattern}, {this} {p.subcategory} {p.category} {is_} just what you need",
        f"{this} {p.pattern} {p.subcategory} {p.category} {is_} shown in {p.colour}",
    ))
    sentences = [main]
    details = _detail_phrases(p, rng)
    if details:
        sentences.append("it " + " and ".join(details))
    # Two filler sentences only where there are no details: texts stay under ~40 tokens.
    fillers = rng.sample(FILLER_SENTENCES, 1 if details else rng.randint(1, 2))
    if rng.random() < 0.3:
        sentences = fillers[:1] + sentences + fillers[1:]
    else:
        sentences += fillers
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


def relative_captions(candidate: Product, target: Product, rng: random.Random) -> List[str]:
    """Two FashionIQ-style captions naming the target's value of every changed attribute
    (the second sometimes also the candidate's, "red instead of blue")."""
    changed = [k for k in ATTRIBUTE_KINDS if getattr(candidate, k) != getattr(target, k)]
    first, second = [], []
    for kind in changed:
        new, old = getattr(target, kind), getattr(candidate, kind)
        if kind == "sleeve":
            first.append("is sleeveless" if new == "sleeveless" else f"has {new} sleeves")
            second.append("sleeveless" if new == "sleeveless" else f"with {new} sleeves")
        elif kind == "neckline":
            first.append(f"has a {new} neckline")
            second.append(rng.choice((f"with a {new} neckline", f"{new} instead of {old} neckline")))
        elif kind == "subcategory":
            first.append(f"is a {new} {target.category}")
            second.append(rng.choice((f"{new} instead of {old}", f"make it a {new}")))
        else:  # colour, pattern
            first.append(f"is {new}")
            second.append(rng.choice((f"{new} instead of {old}", f"make it {new}",
                                      f"is {new} in {kind}" if kind == "colour" else f"has a {new} pattern")))
    return [" and ".join(first), rng.choice((" and ", ", ")).join(second)]


def modify_product(product: Product, rng: random.Random) -> Product:
    """A FashionIQ target: ``product`` with 1-2 of its changeable attributes changed."""
    changeable = ["colour", "pattern"]
    if product.category in SLEEVE_OPTIONS and product.subcategory != "tank":
        changeable.append("sleeve")
    if product.neckline:
        changeable.append("neckline")
    if product.category in ("dress", "shirt"):  # top excluded: "tank" constrains sleeves
        changeable.append("subcategory")
    values = product._asdict()
    for kind in rng.sample(changeable, rng.randint(1, 2)):
        if kind == "sleeve":
            options = _sleeve_options(product.category, product.subcategory)
        elif kind == "subcategory":
            options = CATEGORIES[product.category]
        else:
            options = ATTRIBUTE_VALUES[kind]
        values[kind] = rng.choice([v for v in options if v != values[kind]])
    return Product(**values)


# ----------------------------------------------------------------------------- images
class View(NamedTuple):
    """How one photo of a product is taken. Geometry in units of the image side."""
    background: int = 214  # grey level
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    angle: float = 0.0  # degrees
    flip: bool = False


CANONICAL_VIEW = View()


def sample_view(rng: random.Random) -> View:
    return View(background=rng.randint(196, 228), scale=rng.uniform(0.86, 1.04),
                shift_x=rng.uniform(-0.06, 0.06), shift_y=rng.uniform(-0.04, 0.04),
                angle=rng.uniform(-7.0, 7.0), flip=rng.random() < 0.5)


def _mirror(right):
    """Closed outline from its right half (x >= 0.5, listed top to bottom)."""
    return list(right) + [(1.0 - x, y) for x, y in reversed(right)]


def _ellipse(cx, cy, rx, ry, points=20):
    return [(cx + rx * math.cos(2 * math.pi * i / points), cy + ry * math.sin(2 * math.pi * i / points))
            for i in range(points)]


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


class _Shape:
    """Polygons in unit coordinates: ``fill`` (garment), ``lines`` (thick garment strokes:
    handles, straps), ``cuts`` (background again: necklines), ``details`` (shaded
    polygons) and ``detail_lines`` (shaded strokes: seams, pleats)."""

    def __init__(self):
        self.fill, self.lines, self.cuts, self.details, self.detail_lines = [], [], [], [], []


def _torso(shape, top, hem_y, shoulder, waist, hem, sleeve, neck=0.065):
    c = 0.5
    right = [(c + neck, top)]
    if sleeve == "sleeveless":
        right += [(c + shoulder - 0.05, top + 0.01), (c + shoulder - 0.03, top + 0.14)]
    elif sleeve == "short":
        right += [(c + shoulder, top + 0.03), (c + shoulder + 0.11, top + 0.13),
                  (c + shoulder + 0.05, top + 0.19), (c + shoulder - 0.01, top + 0.14)]
    else:
        right += [(c + shoulder, top + 0.03), (c + shoulder + 0.08, top + 0.09),
                  (c + shoulder + 0.12, top + 0.43), (c + shoulder + 0.05, top + 0.44),
                  (c + shoulder - 0.01, top + 0.16)]
    right += [(c + waist, min(top + 0.26, hem_y - 0.04)), (c + hem, hem_y)]
    shape.fill.append(_mirror(right))


def _neckline(shape, kind, top, neck=0.065):
    c = 0.5
    if kind == "round":
        shape.cuts.append(_ellipse(c, top, neck, 0.07))
    elif kind == "square":
        shape.cuts.append(_rect(c - neck, top - 0.02, c + neck, top + 0.07))
    else:
        shape.cuts.append([(c - neck, top - 0.02), (c + neck, top - 0.02), (c, top + 0.14)])


def silhouette(product: Product) -> _Shape:
    """The outline of a product in the unit square, from its (sub)category and its sleeve,
    neckline and length attributes."""
    s, p, c = _Shape(), product, 0.5
    if p.category == "dress":
        hem_y, hem = {"mini": (0.56, 0.19), "midi": (0.74, 0.23), "maxi": (0.93, 0.27)}[p.subcategory]
        _torso(s, 0.12, hem_y, 0.15, 0.11, hem, p.sleeve)
        _neckline(s, p.neckline, 0.12)
    elif p.category == "top":
        hem_y = {"tee": 0.62, "tank": 0.6, "crop": 0.42}[p.subcategory]
        _torso(s, 0.16, hem_y, 0.16, 0.14, 0.16, p.sleeve)
        _neckline(s, p.neckline, 0.16)
    elif p.category == "shirt":
        hem_y, hem = {"blouse": (0.62, 0.22), "polo": (0.62, 0.17), "tunic": (0.82, 0.19)}[p.subcategory]
        _torso(s, 0.14, hem_y, 0.18, 0.16, hem, p.sleeve)
        s.cuts.append(_ellipse(c, 0.14, 0.05, 0.04))
        if p.subcategory == "polo":  # collar and placket
            s.details += [[(c - 0.08, 0.13), (c - 0.005, 0.2), (c - 0.03, 0.13)],
                          [(c + 0.08, 0.13), (c + 0.005, 0.2), (c + 0.03, 0.13)]]
            s.detail_lines.append(([(c, 0.19), (c, 0.32)], 0.015))
        elif p.subcategory == "tunic":
            s.detail_lines.append(([(c, 0.18), (c, 0.82)], 0.012))
    elif p.category == "jacket":
        hem_y = {"blazer": 0.68, "bomber": 0.56, "parka": 0.84}[p.subcategory]
        _torso(s, 0.13, hem_y, 0.2, 0.18, 0.2 if p.subcategory != "bomber" else 0.17, "long")
        if p.subcategory == "blazer":  # deep V opening with lapels
            s.cuts.append([(c - 0.06, 0.11), (c + 0.06, 0.11), (c, 0.4)])
            s.details += [[(c - 0.06, 0.13), (c - 0.11, 0.2), (c - 0.01, 0.38)],
                          [(c + 0.06, 0.13), (c + 0.11, 0.2), (c + 0.01, 0.38)]]
            s.detail_lines.append(([(c, 0.4), (c, hem_y)], 0.012))
        elif p.subcategory == "bomber":  # ribbed hem band and cuffs
            s.cuts.append(_ellipse(c, 0.13, 0.05, 0.04))
            s.details.append(_rect(c - 0.17, hem_y - 0.05, c + 0.17, hem_y))
            s.detail_lines.append(([(c, 0.17), (c, hem_y)], 0.012))
        else:  # parka: hood and zip
            s.fill.append(_ellipse(c, 0.11, 0.1, 0.1))
            s.details.append(_ellipse(c, 0.12, 0.06, 0.06))
            s.detail_lines.append(([(c, 0.19), (c, hem_y)], 0.012))
    elif p.category == "pants":
        hem_y, outer, inner = {"jeans": (0.92, 0.16, 0.03), "trousers": (0.92, 0.22, 0.02),
                               "joggers": (0.88, 0.12, 0.04), "shorts": (0.44, 0.2, 0.02)}[p.subcategory]
        s.fill.append([(0.32, 0.1), (0.68, 0.1), (c + outer, hem_y), (c + inner, hem_y), (c, 0.38),
                       (c - inner, hem_y), (c - outer, hem_y)])
        s.details.append(_rect(0.32, 0.1, 0.68, 0.14))
        if p.subcategory == "joggers":
            s.details += [_rect(c + inner, hem_y - 0.04, c + outer + 0.01, hem_y),
                          _rect(c - outer - 0.01, hem_y - 0.04, c - inner, hem_y)]
    elif p.category == "skirt":
        hem_y = {"mini": 0.5, "midi": 0.68, "maxi": 0.88}[p.length]
        hem = {"pencil": 0.16, "pleated": 0.24, "flared": 0.31}[p.subcategory]
        right = [(0.64, 0.22), (c + hem, hem_y)]
        if p.subcategory == "flared":
            right.append((c + hem * 0.5, hem_y + 0.03))
        s.fill.append(_mirror(right))
        s.details.append(_rect(0.36, 0.22, 0.64, 0.26))
        if p.subcategory == "pleated":
            for i in range(-3, 4):
                s.detail_lines.append(([(c + 0.035 * i, 0.26), (c + hem / 0.14 * 0.035 * i, hem_y)], 0.01))
    elif p.category == "shoes":
        outline = {
            "sneakers": [(0.15, 0.6), (0.45, 0.54), (0.6, 0.6), (0.82, 0.67), (0.87, 0.8), (0.15, 0.8)],
            "boots": [(0.3, 0.2), (0.54, 0.2), (0.56, 0.6), (0.82, 0.67), (0.87, 0.8), (0.3, 0.8)],
            "heels": [(0.18, 0.48), (0.31, 0.46), (0.56, 0.66), (0.85, 0.7), (0.87, 0.77), (0.5, 0.75),
                      (0.3, 0.62), (0.27, 0.84), (0.22, 0.84), (0.2, 0.6)],
        }[p.subcategory]
        s.fill.append(outline)
        if p.subcategory != "heels":
            s.details.append(_rect(0.15 if p.subcategory == "sneakers" else 0.3, 0.75, 0.87, 0.8))
    else:  # bag
        if p.subcategory == "tote":
            s.fill.append([(0.24, 0.4), (0.76, 0.4), (0.81, 0.86), (0.19, 0.86)])
            s.lines.append(([(0.34, 0.41), (0.38, 0.2), (0.62, 0.2), (0.66, 0.41)], 0.04))
        elif p.subcategory == "clutch":
            s.fill.append(_rect(0.15, 0.44, 0.85, 0.71))
            s.detail_lines.append(([(0.15, 0.45), (0.5, 0.6), (0.85, 0.45)], 0.02))
        else:
            s.fill.append([(0.34, 0.18), (0.66, 0.18), (0.73, 0.26), (0.73, 0.86), (0.27, 0.86), (0.27, 0.26)])
            s.lines.append(([(0.42, 0.19), (0.44, 0.1), (0.56, 0.1), (0.58, 0.19)], 0.03))
            s.details.append(_rect(0.34, 0.56, 0.66, 0.8))
    return s


def _pattern_mask(pattern, u, v):
    """Where the pattern's accent colour shows, in garment coordinates (u, v)."""
    if pattern == "striped":  # horizontal stripes
        return np.mod(v, 0.09) < 0.045
    if pattern == "checked":
        return (np.floor(u / 0.11) + np.floor(v / 0.11)) % 2 == 1
    if pattern == "dotted":  # staggered grid of dots
        period = 0.1
        row = np.floor(v / period)
        du = np.mod(u + 0.5 * period * (row % 2), period) - period / 2
        dv = np.mod(v, period) - period / 2
        return du * du + dv * dv < 0.027 ** 2
    if pattern == "floral":  # four-petal flowers on a staggered grid
        period, offset, radius = 0.16, 0.028, 0.024
        row = np.floor(v / period)
        du = np.mod(u + 0.5 * period * (row % 2), period) - period / 2
        dv = np.mod(v, period) - period / 2
        petals = np.zeros(u.shape, dtype=bool)
        for ou, ov in ((offset, 0), (-offset, 0), (0, offset), (0, -offset)):
            petals |= (du - ou) ** 2 + (dv - ov) ** 2 < radius ** 2
        return petals
    return np.zeros(u.shape, dtype=bool)


def accent_colour(colour: str) -> Tuple[int, int, int]:
    """The pattern's second colour: near-black on light colours, near-white on dark ones."""
    r, g, b = COLOURS[colour]
    return (30, 30, 30) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (236, 236, 236)


def render_product(product: Product, size: int, view: View = CANONICAL_VIEW) -> Image.Image:
    """An RGB ``size`` x ``size`` photo of ``product`` on a plain grey background."""
    supersample = 4 if size <= 96 else 2  # drawn large then box-filtered: smooth edges
    side = size * supersample
    angle = math.radians(view.angle)
    cos, sin = math.cos(angle), math.sin(angle)

    def to_pixels(points):
        out = []
        for x, y in points:
            x, y = x - 0.5, y - 0.5
            x, y = view.scale * (cos * x - sin * y) + 0.5 + view.shift_x, \
                view.scale * (sin * x + cos * y) + 0.5 + view.shift_y
            if view.flip:
                x = 1.0 - x
            out.append((x * side, y * side))
        return out

    shape = silhouette(product)
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for polygon in shape.fill:
        draw.polygon(to_pixels(polygon), fill=255)
    for line, width in shape.lines:
        draw.line(to_pixels(line), fill=255, width=max(1, round(width * view.scale * side)), joint="curve")
    for polygon in shape.cuts:
        draw.polygon(to_pixels(polygon), fill=0)
    shade = Image.new("L", (side, side), 0)
    shade_draw = ImageDraw.Draw(shade)
    for polygon in shape.details:
        shade_draw.polygon(to_pixels(polygon), fill=255)
    for line, width in shape.detail_lines:
        shade_draw.line(to_pixels(line), fill=255, width=max(1, round(width * view.scale * side)))

    # Each supersampled pixel gets one of five colours (palette index), then the box filter
    # of reduce() mixes them: background, fabric, pattern accent, and both shaded.
    base = COLOURS[product.colour]
    accent = accent_colour(product.colour)
    garment = np.asarray(mask) >> 7
    labels = garment * (1 + 2 * (np.asarray(shade) >> 7))
    if product.pattern != "plain":
        labels += garment * _posed_pattern(product.pattern, side, view)
    palette = [view.background] * 3
    for colour in (base, accent, _shaded(base, base), _shaded(accent, base)):
        palette += colour
    image = Image.fromarray(labels.astype(np.uint8), "P")
    image.putpalette(palette)
    return image.convert("RGB").reduce(supersample)


def _shaded(colour, fabric):
    """Seams and trims: darker, or lighter on very dark fabric, so they stay visible."""
    if sum(fabric) > 120:
        return [round(0.62 * c) for c in colour]
    return [round(0.6 * c + 90) for c in colour]


@functools.lru_cache(maxsize=16)
def _pattern_texture(pattern, side):
    """The pattern's accent mask (0/1) over garment coordinates [-0.5, 1.5)^2, ``side``
    pixels per unit: wide enough for every view's pose."""
    grid = (np.arange(2 * side, dtype=np.float32) + 0.5) / side - 0.5
    u, v = np.meshgrid(grid, grid)
    return Image.fromarray(_pattern_mask(pattern, u, v).astype(np.uint8), "L")


def _posed_pattern(pattern, side, view):
    """The texture resampled through the inverse of the view's transform (PIL's affine
    transform maps each output pixel to its garment coordinates): textures are attached to
    the garment and follow its pose."""
    cos, sin = math.cos(math.radians(view.angle)), math.sin(math.radians(view.angle))
    x_sign, x_origin = (-1.0, 1.0) if view.flip else (1.0, 0.0)
    k = 1.0 / view.scale
    dx, dy = x_origin - 0.5 - view.shift_x, -0.5 - view.shift_y
    coefficients = (k * cos * x_sign, k * sin, side * k * (cos * dx + sin * dy) + side,
                    -k * sin * x_sign, k * cos, side * k * (cos * dy - sin * dx) + side)
    posed = _pattern_texture(pattern, side).transform(
        (side, side), Image.AFFINE, coefficients, resample=Image.NEAREST, fillcolor=0)
    return np.asarray(posed)


def _save_image(job):
    path, product, size, view = job
    image = render_product(product, size, view)
    if path.endswith(".png"):
        image.save(path, format="PNG", optimize=False, compress_level=6)
    else:
        image.save(path, format="JPEG", quality=95, subsampling=0)


class _ImageSink:
    """Renders and writes images as they are submitted, in batches (optionally on a process
    pool): memory stays bounded whatever the catalog size, and files do not depend on the
    number of workers since each job carries its own attributes and view."""

    BATCH = 256

    def __init__(self, image_size, workers):
        self.image_size = image_size
        self.pending: List[tuple] = []
        self.folders = set()
        self.count = 0
        self.batch = self.BATCH * workers
        self.pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None

    def submit(self, path: Path, product: Product, view: View):
        if path.parent not in self.folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.folders.add(path.parent)
        self.pending.append((str(path), product, self.image_size, view))
        self.count += 1
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self):
        if self.pool:
            self.pool.map(_save_image, self.pending, chunksize=16)
        else:
            for job in self.pending:
                _save_image(job)
        self.pending = []

    def close(self):
        self.flush()
        if self.pool:
            self.pool.close()
            self.pool.join()

    def abort(self):
        """After an error: drop pending images and stop the workers."""
        self.pending = []
        if self.pool:
            self.pool.terminate()
            self.pool.join()


# ----------------------------------------------------------------------------- datasets
def _write_json(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


def _split_sizes(total, fractions):
    """Sizes of consecutive splits: every split after the first gets round(total * fraction),
    at least 1; the first gets the rest."""
    rest = [max(1, round(total * f)) for f in fractions[1:]]
    return [total - sum(rest)] + rest


def _balanced_categories(seed, key, count, categories):
    """``count`` categories cycling through a fresh shuffle of ``categories``: every
    split, even a tiny one, covers as many categories as it can."""
    order = []
    cycle = 0
    while len(order) < count:
        block = list(categories)
        _rng(seed, key, "cycle", cycle).shuffle(block)
        order += block
        cycle += 1
    return order[:count]


class _CatalogWriter:
    def __init__(self, out: Path, seed: int, num_products: int, sink: _ImageSink):
        self.seed, self.n, self.sink = seed, num_products, sink
        self.datasets = out / "datasets"
        self.counts: Dict[str, dict] = {}

    def _views(self, rng, count):
        return [sample_view(rng) for _ in range(count)]

    def fashiongen(self):
        root = self.datasets / "FashionGen"
        sizes = _split_sizes(self.n, (0.8, 0.2))
        next_id, counts = 100000, {}
        for split, size in zip(("train", "val"), sizes):
            categories = _balanced_categories(self.seed, f"fashiongen/{split}", size, list(CATEGORIES))
            entries = []
            for index, category in enumerate(categories):
                rng = _rng(self.seed, "fashiongen", split, index)
                product = sample_product(rng, category)
                # Every tenth product, the first included, has a single view (single-view
                # handling is exercised even by tiny catalogs).
                views = 1 if index % 10 == 0 else rng.randint(2, 4)
                images = []
                for view_index, view in enumerate(self._views(rng, views)):
                    relative = f"{split}/{next_id}_{view_index}.png"
                    self.sink.submit(root / relative, product, view)
                    images.append(relative)
                entry = {"id": next_id, "images": images, "title": product_title(product, rng),
                         "description": product_description(product, rng),
                         "attributes_id": product.attribute_ids(),
                         "category_id": list(CATEGORIES).index(product.category),
                         "subcategory_id": SUBCATEGORIES.index(product.subcategory)}
                _check_words(entry["title"] + ". " + entry["description"])
                entries.append(entry)
                next_id += 1
            _write_json(root / f"{split}_info.json", entries)
            counts[split] = {"products": len(entries), "images": sum(len(e["images"]) for e in entries)}
        _write_json(root / "categories.json", {"category": list(CATEGORIES), "subcategory": list(SUBCATEGORIES)})
        self.counts["FashionGen"] = counts

    def fashion200k(self):
        root = self.datasets / "Fashion200k"
        total = max(MIN_PRODUCTS, round(self.n / 2))
        next_id, counts = 200000, {}
        for split, size in zip(("train", "test"), _split_sizes(total, (0.8, 0.2))):
            categories = _balanced_categories(self.seed, f"fashion200k/{split}", size, FASHION200K_CATEGORIES)
            entries = []
            for index, category in enumerate(categories):
                rng = _rng(self.seed, "fashion200k", split, index)
                product = sample_product(rng, category)
                folder = f"images/women/{category}/{product.subcategory}/{next_id}"
                images = []
                for view_index, view in enumerate(self._views(rng, rng.randint(2, 4))):
                    relative = f"{folder}/{next_id}_{view_index}.jpeg"
                    self.sink.submit(root / relative, product, view)
                    images.append(relative)
                entries.append({"id": next_id, "images": images, "title": product_title(product, rng),
                                "attributes_id": product.attribute_ids()})
                _check_words(entries[-1]["title"])
                next_id += 1
            _write_json(root / f"{split}_info.json", entries)
            counts[split] = {"products": len(entries), "images": sum(len(e["images"]) for e in entries)}
        self.counts["Fashion200k"] = counts

    def polyvore(self):
        """Base outfits (fresh items) split 70/10/20 form the disjoint splits; "remix" outfits
        reuse the shoes of a train outfit, so the non-disjoint valid/test splits share items
        with train."""
        root = self.datasets / "PolyvoreOutfits"
        items: Dict[str, dict] = {}
        products: Dict[str, Product] = {}

        def new_item(category, family, patterned, rng):
            product = sample_product(rng, category, COLOUR_FAMILIES[family], patterned)
            item_id = str(300000000 + len(items))
            title = product_title(product, rng)
            items[item_id] = {
                "title": title, "description": product_description(product, rng),
                "categories": ["women", POLYVORE_SEMANTIC[category], category, product.subcategory],
                "semantic_category": POLYVORE_SEMANTIC[category],
                "category_id": POLYVORE_CATEGORY_IDS[product.subcategory],
                "url_name": title.replace(" ", "-"),
            }
            products[item_id] = product
            self.sink.submit(root / "images" / f"{item_id}.jpg", product, sample_view(rng))
            _check_words(title + ". " + items[item_id]["description"])
            return item_id

        def new_outfit(key, family, fixed=None):
            """Items for a random template; at most one patterned item (the outfit's
            statement piece). ``fixed``: (slot category, item id) reused from elsewhere."""
            rng = _rng(self.seed, "polyvore", key)
            template = rng.choice(OUTFIT_TEMPLATES)
            categories = [rng.choice(SLOT_CATEGORIES.get(slot, (slot,))) for slot in template]
            statement = rng.randrange(len(categories)) if rng.random() < 0.75 else None
            if fixed and products[fixed[1]].pattern != "plain":
                statement = categories.index(fixed[0])
            outfit = []
            for position, category in enumerate(categories):
                if fixed and category == fixed[0]:
                    outfit.append(fixed[1])
                else:
                    outfit.append(new_item(category, family, position == statement, rng))
            return outfit

        num_base = max(6, round(self.n / 4))
        base = []
        for index in range(num_base):
            family = _rng(self.seed, "polyvore", "family", index).choice(sorted(COLOUR_FAMILIES))
            base.append((family, new_outfit(f"base/{index}", family)))
        train_size, valid_size, test_size = _split_sizes(num_base, (0.7, 0.1, 0.2))
        train, valid, test = (base[:train_size], base[train_size:train_size + valid_size],
                              base[train_size + valid_size:])
        remix = []
        for index in range(max(2, round(0.3 * num_base))):
            family, donor = _rng(self.seed, "polyvore", "donor", index).choice(train)
            shoes = next(i for i in donor if products[i].category == "shoes")
            remix.append((family, new_outfit(f"remix/{index}", family, ("shoes", shoes))))
        remix_valid = max(1, len(remix) // 4)
        splits = {
            "disjoint": {"train": train, "valid": valid, "test": test},
            "nondisjoint": {"train": train, "valid": valid + remix[:remix_valid],
                            "test": test + remix[remix_valid:]},
        }
        counts = {}
        next_set = 500000
        for name, parts in splits.items():
            for split, outfits in parts.items():
                official = []
                for _, outfit in outfits:
                    official.append({"set_id": str(next_set), "items": [
                        {"item_id": item, "index": k + 1} for k, item in enumerate(outfit)]})
                    next_set += 1
                _write_json(root / name / f"{split}.json", official)
            # OCIR: train asks for every item of every outfit, test for one random item.
            rng = _rng(self.seed, "polyvore", "ocir", name)
            questions = {"train": [], "test": []}
            for _, outfit in parts["train"]:
                for blank in outfit:
                    questions["train"].append({"question": [i for i in outfit if i != blank], "blank": blank})
            for _, outfit in parts["test"]:
                blank = rng.choice(outfit)
                questions["test"].append({"question": [i for i in outfit if i != blank], "blank": blank})
            for split, entries in questions.items():
                _write_json(root / f"ocir_{name}_{split}.json", entries)
            counts[name] = {split: len(outfits) for split, outfits in parts.items()}
        _write_json(root / "polyvore_item_metadata.json", items)
        train_items = sorted({i for _, outfit in train for i in outfit}, key=int)
        _write_json(root / "train_info.json", [
            {"id": int(i), "images": [f"images/{i}.jpg"], "title": items[i]["title"],
             "description": items[i]["description"], "attributes_id": products[i].attribute_ids(),
             "category_id": items[i]["category_id"]}
            for i in train_items])
        counts["items"] = len(items)
        counts["pretraining_items"] = len(train_items)
        self.counts["PolyvoreOutfits"] = counts

    def fashioniq(self):
        root = self.datasets / "FashionIQ"
        attributes: Dict[str, List[int]] = {}
        counts = {}
        train_size = max(4, round(self.n / 3))
        for name, category in FASHIONIQ_CATEGORIES.items():
            for split, size in (("train", train_size), ("val", max(3, round(train_size / 4)))):
                rng = _rng(self.seed, "fashioniq", name, split)
                pool: List[Tuple[str, Product]] = []

                def new_image(product):
                    asin = f"B{len(attributes) + 1000000:09d}"
                    attributes[asin] = product.attribute_ids()
                    self.sink.submit(root / "images" / f"{asin}.png", product, sample_view(rng))
                    pool.append((asin, product))
                    return asin

                triplets = []
                for _ in range(size):
                    # Reusing images as references, as the real dataset does.
                    if pool and rng.random() < 0.3:
                        candidate_asin, candidate = rng.choice(pool)
                    else:
                        candidate = sample_product(rng, category)
                        candidate_asin = new_image(candidate)
                    target = modify_product(candidate, rng)
                    captions = relative_captions(candidate, target, rng)
                    triplets.append({"candidate": candidate_asin, "target": new_image(target),
                                     "captions": captions})
                    _check_words(", ".join(captions))
                for _ in range(max(1, len(pool) // 10)):  # gallery images in no triplet
                    new_image(sample_product(rng, category))
                _write_json(root / "captions" / f"cap.{name}.{split}.json", triplets)
                _write_json(root / "image_splits" / f"split.{name}.{split}.json", [a for a, _ in pool])
                counts[f"{name}.{split}"] = {"triplets": len(triplets), "images": len(pool)}
        _write_json(root / "image_attributes.json", attributes)
        self.counts["FashionIQ"] = counts


def vocabulary() -> List[str]:
    """vocab.txt lines: special tokens, punctuation, suffix pieces, then every word the
    texts can contain except WORDPIECE_SPLITS (which WordPiece builds from stem + suffix)."""
    words = (set(WORD_TAGS) - set(WORDPIECE_SPLITS)) | {stem for stem, _ in WORDPIECE_SPLITS.values()}
    suffixes = sorted({suffix for _, suffix in WORDPIECE_SPLITS.values()})
    return list(SPECIAL_TOKENS) + list(PUNCTUATION) + suffixes + sorted(words)


def _write_vocabulary(out: Path):
    folder = out / "vocab"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    _write_json(folder / "tokenizer_config.json", {
        "do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"})
    _write_json(folder / "pos_lexicon.json", WORD_TAGS)


def _check_words(text):
    """Every word of a text must be in the lexicon (and so in the vocabulary)."""
    for word in text.lower().replace(".", " ").replace(",", " ").split():
        if word not in WORD_TAGS:
            raise RuntimeError(f"generator bug: word '{word}' of '{text}' is not in WORD_TAGS")


def _prepare_output(out: Path):
    """Refuses a folder holding anything but a previous catalog; clears a previous one."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"'{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        manifest = out / MANIFEST
        ours = (out / INCOMPLETE_MARKER).exists()
        if not ours and manifest.is_file():
            try:
                ours = json.loads(manifest.read_text(encoding="utf-8")).get("generator") == GENERATOR
            except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                ours = False
        if not ours:
            raise FileExistsError(
                f"'{out}' is not empty and holds no catalog written by {GENERATOR} "
                f"(no {MANIFEST} from it, no {INCOMPLETE_MARKER}): refusing to write into it; "
                "pick an empty or new folder")
        for name in OWNED_ENTRIES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE_MARKER).write_text(
        f"A catalog being written by {GENERATOR}, or an interrupted one: rerun the generator.\n")


def generate_catalog(out_dir, seed: int = 0, num_products: int = DEFAULT_PRODUCTS,
                     image_size: int = DEFAULT_IMAGE_SIZE, workers: int = 1) -> Path:
    """Writes the catalog (see the module docstring) to ``out_dir``; returns its path.
    ``workers`` > 1 renders images on a process pool (same files either way)."""
    if not isinstance(num_products, int) or num_products < MIN_PRODUCTS:
        raise ValueError(f"num_products (--products) must be an integer >= {MIN_PRODUCTS}, got {num_products!r}")
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size (--image-size) must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers (--workers) must be an integer >= 1, got {workers!r}")
    out = Path(out_dir).expanduser().absolute()
    _prepare_output(out)
    sink = _ImageSink(image_size, workers)
    writer = _CatalogWriter(out, seed, num_products, sink)
    try:
        writer.fashiongen()
        writer.fashion200k()
        writer.polyvore()
        writer.fashioniq()
        sink.close()
    except BaseException:
        sink.abort()
        raise
    _write_vocabulary(out)
    _write_json(out / MANIFEST, {
        "generator": GENERATOR, "generator_version": GENERATOR_VERSION, "seed": seed,
        "products": num_products, "image_size": image_size, "images": sink.count,
        "counts": writer.counts,
        "attributes": list(ATTRIBUTE_NAMES),
        "attribute_words": list(ATTRIBUTE_WORDS), "generic_words": list(GENERIC_WORDS),
        "filler_words": list(FILLER_WORDS),
        "colours": {name: list(rgb) for name, rgb in COLOURS.items()},
        "colour_families": {name: list(c) for name, c in COLOUR_FAMILIES.items()},
        "patterns": list(PATTERNS), "categories": {c: list(s) for c, s in CATEGORIES.items()},
        "sleeves": list(SLEEVES), "necklines": list(NECKLINES), "lengths": list(LENGTHS),
    })
    (out / INCOMPLETE_MARKER).unlink()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mmf_fashionvil.synthetic",
                                     description="Write a synthetic fashion catalog in the "
                                     "FashionGen/Fashion200k/Polyvore/FashionIQ layouts.")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous catalog)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--products", type=int, default=DEFAULT_PRODUCTS,
                        help=f"FashionGen products; other datasets scale with it (default {DEFAULT_PRODUCTS})")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering images")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        out = generate_catalog(args.out, args.seed, args.products, args.image_size, args.workers)
    except (ValueError, FileExistsError) as e:
        parser.exit(2, f"error: {e}\n")
    with open(out / MANIFEST, encoding="utf-8") as f:
        images = json.load(f)["images"]
    print(f"Wrote a synthetic catalog ({args.products} FashionGen products, {images} images of "
          f"{args.image_size} px) to {out} in {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
