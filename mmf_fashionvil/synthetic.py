"""A small synthetic fashion catalog in the real datasets' pre-processed layout (SPEC §4.1, §5).

    python -m mmf_fashionvil.synthetic --out DIR [--seed N] [--products N] [--image-size PX]

Writes, deterministically from the seed, under DIR/datasets/: FashionGen (products with
several views), Fashion200k, PolyvoreOutfits (item metadata with sparse category ids,
outfits and OCIR files, disjoint and non-disjoint) and FashionIQ (relative-caption
triplets); DIR/vocab/ a WordPiece vocabulary covering every word; DIR/catalog.json last.
Images really show what the text says: the silhouette is the (sub)category, the fill
colour and texture are the colour and pattern, so models can learn from it.
"""
import argparse
import json
import os
import random

from PIL import Image, ImageDraw

GENERATOR_VERSION = 1
COLOURS = {
    "red": (214, 40, 40), "blue": (40, 80, 214), "green": (40, 160, 70), "yellow": (235, 210, 50),
    "black": (25, 25, 25), "white": (245, 245, 245), "pink": (240, 130, 180),
    "orange": (240, 140, 30), "purple": (130, 60, 170), "brown": (120, 75, 40),
    "grey": (128, 128, 128), "navy": (20, 30, 90),
}
# Outfits share a colour family (the learnable complementary-item rule).
COLOUR_FAMILIES = {
    "warm": ["red", "yellow", "pink", "orange", "brown"],
    "cool": ["blue", "green", "purple", "navy"],
    "neutral": ["black", "white", "grey"],
}
PATTERNS = ["plain", "striped", "dotted", "checked"]
# category -> subcategories; the silhouette (x0, y0, x1, y1 in unit square) per subcategory.
CATEGORIES = {
    "dress": {"mini": (0.25, 0.1, 0.75, 0.55), "midi": (0.25, 0.1, 0.75, 0.75), "maxi": (0.25, 0.1, 0.75, 0.95)},
    "shirt": {"polo": (0.15, 0.15, 0.85, 0.6), "blouse": (0.2, 0.1, 0.8, 0.65), "tee": (0.1, 0.2, 0.9, 0.6)},
    "top": {"tank": (0.3, 0.15, 0.7, 0.6), "crop": (0.2, 0.25, 0.8, 0.5)},
    "pants": {"jeans": (0.3, 0.05, 0.7, 0.95), "joggers": (0.25, 0.1, 0.75, 0.85)},
    "skirt": {"pleated": (0.2, 0.3, 0.8, 0.75), "pencil": (0.3, 0.3, 0.7, 0.8)},
    "jacket": {"blazer": (0.1, 0.1, 0.9, 0.7), "parka": (0.05, 0.05, 0.95, 0.85)},
    "shoes": {"sneakers": (0.15, 0.6, 0.85, 0.85), "boots": (0.3, 0.3, 0.7, 0.9)},
    "bag": {"tote": (0.2, 0.3, 0.8, 0.8), "clutch": (0.2, 0.45, 0.8, 0.7)},
}
SUBCATEGORIES = [s for subs in CATEGORIES.values() for s in subs]
# Sparse ids as in Polyvore's metadata (SPEC §4.1).
POLYVORE_CATEGORY_IDS = {"dress": 3, "shirt": 17, "top": 236, "pants": 1029, "skirt": 2513,
                         "jacket": 3118, "shoes": 4118, "bag": 4518}
FASHION200K_CATEGORIES = ["dress", "jacket", "pants", "skirt", "top"]
FASHIONIQ_CATEGORIES = {"dress": ["dress"], "shirt": ["shirt"], "toptee": ["top"]}
ATTRIBUTE_WORDS = sorted(set(COLOURS) | set(PATTERNS) | set(CATEGORIES) | set(SUBCATEGORIES))
# Filler: determiners, pronouns, verbs, adverbs, prepositions — never nouns or adjectives.
FILLER_SENTENCES = ["you will love it", "wear it often", "it fits so well", "made to last",
                    "simply wear it and go", "buy it now"]
FILLER_WORDS = sorted({w for s in FILLER_SENTENCES for w in s.split()} | {"this", "is", "in", "and", "a", "with"})


def _draw_product(attrs, size, rng, view):
    """One view: silhouette of the subcategory filled with colour + pattern on a background."""
    scale = 4  # draw large, downsample: smooth edges
    big = size * scale
    background = rng.randint(170, 230) if view else 210
    image = Image.new("RGB", (big, big), (background,) * 3)
    fabric = Image.new("RGB", (big, big), COLOURS[attrs["colour"]])
    draw = ImageDraw.Draw(fabric)
    accent = (255, 255, 255) if sum(COLOURS[attrs["colour"]]) < 380 else (20, 20, 20)
    step = big // 8
    if attrs["pattern"] == "striped":
        for y in range(0, big, step):
            draw.rectangle([0, y, big, y + step // 2], fill=accent)
    elif attrs["pattern"] == "dotted":
        for y in range(step // 2, big, step):
            for x in range(step // 2, big, step):
                draw.ellipse([x - step // 4, y - step // 4, x + step // 4, y + step // 4], fill=accent)
    elif attrs["pattern"] == "checked":
        for y in range(0, big, step):
            for x in range(0, big, step):
                if (x // step + y // step) % 2:
                    draw.rectangle([x, y, x + step, y + step], fill=accent)
    x0, y0, x1, y1 = CATEGORIES[attrs["category"]][attrs["subcategory"]]
    jitter = 0.04 if view else 0.0
    dx, dy = rng.uniform(-jitter, jitter), rng.uniform(-jitter, jitter)
    box = [(x0 + dx) * big, (y0 + dy) * big, (x1 + dx) * big, (y1 + dy) * big]
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).rounded_rectangle(box, radius=big // 16, fill=255)
    image.paste(fabric, (0, 0), mask)
    image = image.resize((size, size), Image.BILINEAR)
    if view and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


def _random_attributes(rng, categories=None, colours=None):
    category = rng.choice(categories or list(CATEGORIES))
    return {
        "category": category,
        "subcategory": rng.choice(list(CATEGORIES[category])),
        "colour": rng.choice(colours or list(COLOURS)),
        "pattern": rng.choice(PATTERNS),
    }


def _title(attrs):
    pattern = "" if attrs["pattern"] == "plain" else attrs["pattern"] + " "
    return f"{attrs['colour']} {pattern}{attrs['subcategory']} {attrs['category']}"


def _description(attrs, rng):
    first = f"this {attrs['category']} is {attrs['colour']} and {attrs['pattern']}"
    return f"{first}. {rng.choice(FILLER_SENTENCES)}"


def _attribute_ids(attrs):
    return sorted(ATTRIBUTE_WORDS.index(attrs[k]) for k in ("colour", "pattern", "category", "subcategory"))


class _Writer:
    def __init__(self, out, size, rng):
        self.out, self.size, self.rng = out, size, rng

    def image(self, relative, attrs, view):
        path = os.path.join(self.out, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _draw_product(attrs, self.size, self.rng, view).save(path)

    def json(self, relative, data):
        path = os.path.join(self.out, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)


def _products_with_views(writer, rng, count, folder, prefix, categories=None, single_view_rate=0.1):
    products = []
    for index in range(count):
        attrs = _random_attributes(rng, categories)
        views = 1 if rng.random() < single_view_rate else rng.randint(2, 4)
        images = []
        for view in range(views):
            relative = f"{folder}/{prefix}{index:05d}_{view}.png"
            writer.image(relative, attrs, view)
            images.append(relative)
        products.append((attrs, images))
    return products


def _write_fashiongen(writer, rng, count):
    root = "datasets/FashionGen"
    split_at = max(1, int(round(count * 0.8)))
    for split, (start, stop) in {"train": (0, split_at), "val": (split_at, count)}.items():
        w = _Writer(os.path.join(writer.out, root), writer.size, rng)
        products = _products_with_views(w, rng, stop - start, split, f"fg{start}_")
        entries = [
            {"id": 100000 + start + i, "images": images, "title": _title(a),
             "description": _description(a, rng), "attributes_id": _attribute_ids(a),
             "category_id": list(CATEGORIES).index(a["category"]),
             "subcategory_id": SUBCATEGORIES.index(a["subcategory"])}
            for i, (a, images) in enumerate(products)
        ]
        writer.json(f"{root}/{split}_info.json", entries)
    writer.json(f"{root}/categories.json", {"category": list(CATEGORIES), "subcategory": SUBCATEGORIES})


def _write_fashion200k(writer, rng, count):
    root = "datasets/Fashion200k"
    w = _Writer(os.path.join(writer.out, root), writer.size, rng)
    split_at = max(1, int(round(count * 0.8)))
    for split, n in {"train": split_at, "test": count - split_at}.items():
        products = _products_with_views(w, rng, n, f"images/{split}", "f2k", FASHION200K_CATEGORIES, 0.0)
        writer.json(f"{root}/{split}_info.json", [
            {"id": 200000 + i, "images": images, "title": _title(a), "attributes_id": _attribute_ids(a)}
            for i, (a, images) in enumerate(products)
        ])


def _outfit_categories(rng):
    if rng.random() < 0.4:
        return ["dress", "shoes", "bag"]
    return [rng.choice(["shirt", "top"]), rng.choice(["pants", "skirt"]), "shoes", "bag"]


def _write_polyvore(writer, rng, count):
    root = "datasets/PolyvoreOutfits"
    metadata, outfits, next_id = {}, [], [300000]

    def new_item(category, family):
        attrs = _random_attributes(rng, [category], COLOUR_FAMILIES[family])
        item_id = str(next_id[0])
        next_id[0] += 1
        writer.image(f"{root}/images/{item_id}.jpg", attrs, 0)
        metadata[item_id] = {
            "title": _title(attrs), "description": _description(attrs, rng),
            "categories": [attrs["category"], attrs["subcategory"]],
            "semantic_category": attrs["category"], "category_id": POLYVORE_CATEGORY_IDS[category],
            "url_name": _title(attrs).replace(" ", "-"),
        }
        return item_id

    num_outfits = max(4, count // 3)
    for index in range(num_outfits):
        family = rng.choice(list(COLOUR_FAMILIES))
        items = [new_item(c, family) for c in _outfit_categories(rng)]
        outfits.append({"set_id": str(400000 + index), "family": family, "items": items})
    split_at = max(2, int(round(num_outfits * 0.75)))
    train, test = outfits[:split_at], outfits[split_at:]
    # Non-disjoint test outfits reuse a train item of the same family where one exists.
    nondisjoint_test = []
    for outfit in test:
        items = list(outfit["items"])
        donors = [o for o in train if o["family"] == outfit["family"]]
        if donors:
            donor_item = donors[0]["items"][-1]  # a bag: every outfit ends with one
            items[-1] = donor_item
        nondisjoint_test.append(dict(outfit, items=items))

    def official(outfit_list):
        return [{"set_id": o["set_id"], "items": [{"item_id": i, "index": k + 1}
                                                 for k, i in enumerate(o["items"])]}
                for o in outfit_list]

    def ocir(outfit_list):
        entries = []
        for outfit in outfit_list:
            blank = rng.randrange(len(outfit["items"]))
            entries.append({"question": [i for k, i in enumerate(outfit["items"]) if k != blank],
                            "blank": outfit["items"][blank]})
        return entries

    for name, test_outfits in {"disjoint": test, "nondisjoint": nondisjoint_test}.items():
        valid_split = max(1, len(test_outfits) // 2)
        writer.json(f"{root}/{name}/train.json", official(train))
        writer.json(f"{root}/{name}/valid.json", official(test_outfits[:valid_split]))
        writer.json(f"{root}/{name}/test.json", official(test_outfits[valid_split:]))
        writer.json(f"{root}/ocir_{name}_train.json", ocir(train))
        writer.json(f"{root}/ocir_{name}_test.json", ocir(test_outfits))
    writer.json(f"{root}/polyvore_item_metadata.json", metadata)
    train_items = sorted({i for o in train for i in o["items"]})
    writer.json(f"{root}/train_info.json", [
        {"id": int(i), "images": [f"images/{i}.jpg"], "title": metadata[i]["title"],
         "description": metadata[i]["description"], "category_id": metadata[i]["category_id"],
         "attributes_id": []}
        for i in train_items
    ])


def _relative_captions(candidate, target):
    changed = [k for k in ("colour", "pattern") if candidate[k] != target[k]]
    phrases = {"colour": f"is {target['colour']}", "pattern": f"is {target['pattern']}"}
    first = " and ".join(phrases[k] for k in changed)
    second = ", ".join(f"{target[k]} instead of {candidate[k]}" for k in changed)
    return [first, second]


def _write_fashioniq(writer, rng, count):
    root = "datasets/FashionIQ"
    per_category = max(4, count // 3)
    asin_counter = [0]
    for name, categories in FASHIONIQ_CATEGORIES.items():
        for split in ("train", "val"):
            n = per_category if split == "train" else max(3, per_category // 3)
            images, triplets = [], []
            for _ in range(n):
                candidate = _random_attributes(rng, categories)
                target = dict(candidate)
                changes = rng.sample(["colour", "pattern"], rng.randint(1, 2))
                if "colour" in changes:
                    target["colour"] = rng.choice([c for c in COLOURS if c != candidate["colour"]])
                if "pattern" in changes:
                    target["pattern"] = rng.choice([p for p in PATTERNS if p != candidate["pattern"]])
                pair = []
                for attrs in (candidate, target):
                    asin = f"B{asin_counter[0]:08d}"
                    asin_counter[0] += 1
                    writer.image(f"{root}/images/{asin}.png", attrs, 0)
                    images.append(asin)
                    pair.append(asin)
                triplets.append({"candidate": pair[0], "target": pair[1],
                                 "captions": _relative_captions(candidate, target)})
            writer.json(f"{root}/captions/cap.{name}.{split}.json", triplets)
            writer.json(f"{root}/image_splits/split.{name}.{split}.json", images)


def _write_vocabulary(out):
    words = set()
    for dirpath, _, files in os.walk(os.path.join(out, "datasets")):
        for name in files:
            if name.endswith(".json"):
                with open(os.path.join(dirpath, name)) as f:
                    text = f.read()
                for token in text.replace('"', " ").replace(".", " . ").replace(",", " , ").split():
                    if token.isalpha() and token.islower():
                        words.add(token)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", "##s", "##ed", "##ing"]
    os.makedirs(os.path.join(out, "vocab"), exist_ok=True)
    with open(os.path.join(out, "vocab", "vocab.txt"), "w") as f:
        f.write("\n".join(tokens + sorted(words)) + "\n")
    with open(os.path.join(out, "vocab", "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "model_max_length": 512,
                   "tokenizer_class": "BertTokenizer"}, f, indent=1, sort_keys=True)


def generate_catalog(out_dir, seed=0, num_products=600, image_size=64):
    """Writes the catalog to ``out_dir`` and returns its path. ``num_products`` is the
    FashionGen size; the other datasets scale with it."""
    if num_products < 5:
        raise ValueError(f"--products must be at least 5, got {num_products}")
    if image_size < 16:
        raise ValueError(f"--image-size must be at least 16, got {image_size}")
    out = os.path.abspath(str(out_dir))
    manifest = os.path.join(out, "catalog.json")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(manifest):
        raise FileExistsError(f"'{out}' exists, is not empty and holds no catalog.json: "
                              "refusing to write a catalog into it")
    if os.path.isfile(manifest):
        os.remove(manifest)  # an interrupted rewrite must not look complete
    rng = random.Random(seed)
    writer = _Writer(out, image_size, rng)
    _write_fashiongen(writer, rng, num_products)
    _write_fashion200k(writer, rng, max(5, num_products // 2))
    _write_polyvore(writer, rng, num_products)
    _write_fashioniq(writer, rng, num_products)
    _write_vocabulary(out)
    writer.json("catalog.json", {
        "generator_version": GENERATOR_VERSION, "seed": seed, "products": num_products,
        "image_size": image_size, "attribute_words": ATTRIBUTE_WORDS, "filler_words": FILLER_WORDS,
        "colours": sorted(COLOURS), "patterns": PATTERNS, "categories": list(CATEGORIES),
        "subcategories": SUBCATEGORIES,
    })
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--products", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    out = generate_catalog(args.out, args.seed, args.products, args.image_size)
    print(f"Wrote a synthetic catalog of {args.products} products to {out}")


if __name__ == "__main__":
    main()
