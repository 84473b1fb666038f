"""Writing a catalog: the four datasets' files from seeded products, the image sink that renders
and saves their photos, the vocabulary files and the manifest (generate_catalog)."""
import json
import multiprocessing
import random
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

from mmf_fashionvil.tools.synthetic.products import (
    ATTRIBUTE_NAMES, ATTRIBUTE_WORDS, CATEGORIES, COLOUR_FAMILIES, COLOURS, FASHION200K_CATEGORIES,
    FASHIONIQ_CATEGORIES, FILLER_WORDS, GENERIC_WORDS, LENGTHS, NECKLINES, OUTFIT_TEMPLATES,
    PATTERNS, POLYVORE_CATEGORY_IDS, POLYVORE_SEMANTIC, SLEEVES, SLOT_CATEGORIES, SUBCATEGORIES,
    WORD_TAGS, Product, modify_product, product_description, product_title, relative_captions,
    sample_product, vocabulary,
)
from mmf_fashionvil.tools.synthetic.render import View, render_product, sample_view

GENERATOR = "mmf_fashionvil.synthetic"
GENERATOR_VERSION = 3  # 3: image paths relative to the split image folders (same images)
DEFAULT_PRODUCTS = 600
DEFAULT_IMAGE_SIZE = 64
MIN_PRODUCTS = 5
MIN_IMAGE_SIZE = 16
MANIFEST = "catalog.json"
INCOMPLETE_MARKER = ".catalog_incomplete"
# Top-level entries this generator writes; only these are removed when a catalog is replaced.
OWNED_ENTRIES = ("datasets", "vocab", MANIFEST, INCOMPLETE_MARKER,
                 # --format raw: the releases' folders (raw.py)
                 "fashiongen", "fashion200k", "polyvore_outfits", "fashioniq")
FORMATS = ("layout", "raw")


def _rng(seed: int, *key) -> random.Random:
    """An independent generator per (seed, key): a string seed is hashed with SHA-512, so
    items do not depend on generation order (streaming, parallel rendering)."""
    return random.Random("/".join(map(str, (seed,) + key)))


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
                    relative = f"{next_id}_{view_index}.png"  # in the split's image folder
                    self.sink.submit(root / split / relative, product, view)
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
                folder = f"women/{category}/{product.subcategory}/{next_id}"  # in images/
                images = []
                for view_index, view in enumerate(self._views(rng, rng.randint(2, 4))):
                    relative = f"{folder}/{next_id}_{view_index}.jpeg"
                    self.sink.submit(root / "images" / relative, product, view)
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
            {"id": int(i), "images": [f"{i}.jpg"], "title": items[i]["title"],
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
                     image_size: int = DEFAULT_IMAGE_SIZE, workers: int = 1,
                     format: str = "layout") -> Path:
    """Writes the catalog (see the package docstring) to ``out_dir``; returns its path.
    ``workers`` > 1 renders images on a process pool (same files either way). ``format``
    raw: the same catalog as the official releases ship it (raw.py), for the preparation
    tool."""
    if format not in FORMATS:
        raise ValueError(f"format (--format) must be one of {FORMATS}, got {format!r}")
    if not isinstance(num_products, int) or num_products < MIN_PRODUCTS:
        raise ValueError(f"num_products (--products) must be an integer >= {MIN_PRODUCTS}, got {num_products!r}")
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size (--image-size) must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers (--workers) must be an integer >= 1, got {workers!r}")
    out = Path(out_dir).expanduser().absolute()
    _prepare_output(out)
    if format == "raw":
        from mmf_fashionvil.tools.synthetic.raw import generate_raw

        manifest = generate_raw(out, lambda folder: generate_catalog(
            folder, seed, num_products, image_size, workers))
        _write_json(out / MANIFEST, dict(manifest, format="raw"))
        (out / INCOMPLETE_MARKER).unlink()
        return out
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
