"""A synthetic fashion catalog in the real datasets' pre-processed layout (SPEC §4.1, §5).

    python -m mmf_fashionvil.synthetic --out DIR [--seed N] [--products N] [--image-size PX]
                                       [--workers N]

Writes, deterministically from the seed (same arguments -> byte-identical files), in the
authors' layout (SPEC §4.1: image paths in an info file are relative to the image folder of
its split: FashionGen/train, FashionGen/val, Fashion200k/images, PolyvoreOutfits/images):

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
                           ``python -m mmf_fashionvil.tools.attributes --tagger lexicon``)
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

Modules: ``products`` (attributes, words, products and their texts), ``render`` (the images),
``writers`` (the datasets' files, generate_catalog), ``cli`` (the command line).
"""
# The public API (tests, the demo, the benchmarks).
from mmf_fashionvil.tools.synthetic.cli import main  # noqa: F401
from mmf_fashionvil.tools.synthetic.products import (  # noqa: F401
    ATTRIBUTE_NAMES, ATTRIBUTE_WORDS, CATEGORIES, COLOUR_FAMILIES, COLOURS, FILLER_WORDS,
    GENERIC_WORDS, LENGTHS, NECKLINES, PATTERNS, SLEEVES, WORD_TAGS, Product, sample_product,
    vocabulary,
)
from mmf_fashionvil.tools.synthetic.render import (  # noqa: F401
    CANONICAL_VIEW, View, render_product, sample_view,
)
from mmf_fashionvil.tools.synthetic.writers import (  # noqa: F401
    DEFAULT_IMAGE_SIZE, DEFAULT_PRODUCTS, GENERATOR, GENERATOR_VERSION, INCOMPLETE_MARKER, MANIFEST,
    MIN_IMAGE_SIZE, MIN_PRODUCTS, generate_catalog,
)
