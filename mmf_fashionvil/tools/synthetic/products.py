"""The catalog's products and texts: attribute tables, the word lexicon (every word a text can
contain, with its Penn tag), sampling products, their titles and descriptions, FashionIQ-style
modified products with their relative captions, and the WordPiece vocabulary."""
import random
from typing import List, NamedTuple, Optional, Sequence

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


def vocabulary() -> List[str]:
    """vocab.txt lines: special tokens, punctuation, suffix pieces, then every word the
    texts can contain except WORDPIECE_SPLITS (which WordPiece builds from stem + suffix)."""
    words = (set(WORD_TAGS) - set(WORDPIECE_SPLITS)) | {stem for stem, _ in WORDPIECE_SPLITS.values()}
    suffixes = sorted({suffix for _, suffix in WORDPIECE_SPLITS.values()})
    return list(SPECIAL_TOKENS) + list(PUNCTUATION) + suffixes + sorted(words)
