"""The synthetic catalog: layout (SPEC §4.1), determinism, images that show what the text
says, learnable FashionIQ/Polyvore structure, vocabulary coverage, safe output handling."""
import json
import os
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mmf_fashionvil.tools import synthetic
from mmf_fashionvil.tools.synthetic import writers

SIZE = 32
PRODUCTS = 24


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return synthetic.generate_catalog(tmp_path_factory.mktemp("synthetic") / "catalog", seed=5,
                                      num_products=PRODUCTS, image_size=SIZE)


def load(root, relative):
    with open(os.path.join(root, relative), encoding="utf-8") as f:
        return json.load(f)


def all_files(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def decode(catalog, attribute_ids):
    """{kind: value} from attribute ids, via the names written in catalog.json."""
    names = load(catalog, "catalog.json")["attributes"]
    pairs = [names[i].split(":") for i in attribute_ids]
    kinds = [k for k, _ in pairs]
    assert len(kinds) == len(set(kinds)), f"two values of one kind in {pairs}"
    return dict(pairs)


def words(text):
    return text.lower().replace(".", " ").replace(",", " ").split()


def all_texts(catalog):
    texts = []
    for split in ("train", "val"):
        texts += [e["title"] + ". " + e["description"]
                  for e in load(catalog, f"datasets/FashionGen/{split}_info.json")]
    for split in ("train", "test"):
        texts += [e["title"] for e in load(catalog, f"datasets/Fashion200k/{split}_info.json")]
    texts += [m["title"] + ". " + m["description"]
              for m in load(catalog, "datasets/PolyvoreOutfits/polyvore_item_metadata.json").values()]
    for name in ("dress", "shirt", "toptee"):
        for split in ("train", "val"):
            texts += [", ".join(t["captions"])
                      for t in load(catalog, f"datasets/FashionIQ/captions/cap.{name}.{split}.json")]
    return texts


def garment_pixels(image):
    """Pixels away from the (uniform) background, eroded by one pixel to drop the
    anti-aliased outline: an (N, 3) array."""
    array = np.asarray(image.convert("RGB")).astype(int)
    foreground = np.abs(array - array[0, 0]).sum(-1) > 30
    core = foreground.copy()
    core[1:] &= foreground[:-1]
    core[:-1] &= foreground[1:]
    core[:, 1:] &= foreground[:, :-1]
    core[:, :-1] &= foreground[:, 1:]
    return array[core], core


def nearest_colour(mean):
    return min(synthetic.COLOURS, key=lambda n: np.square(np.array(synthetic.COLOURS[n]) - mean).sum())


def test_same_seed_gives_identical_files_whatever_the_workers_and_another_seed_differs(catalog, tmp_path):
    reference = all_files(catalog)
    again = synthetic.generate_catalog(tmp_path / "again", seed=5, num_products=PRODUCTS,
                                       image_size=SIZE, workers=2)
    assert all_files(again) == reference
    other = all_files(synthetic.generate_catalog(tmp_path / "other", seed=6,
                                                 num_products=PRODUCTS, image_size=SIZE))
    assert other["datasets/FashionGen/train_info.json"] != reference["datasets/FashionGen/train_info.json"]
    shared_images = [p for p in reference if p.endswith(".png") and p in other]
    assert sum(reference[p] != other[p] for p in shared_images) > len(shared_images) // 2
    assert other["vocab/vocab.txt"] == reference["vocab/vocab.txt"]  # fixed by the templates


def test_every_image_is_referenced_exists_and_has_the_requested_size(catalog):
    referenced = set()
    for split in ("train", "val"):
        for entry in load(catalog, f"datasets/FashionGen/{split}_info.json"):
            # image paths are relative to the split's image folder (the authors' layout)
            referenced |= {os.path.join("datasets/FashionGen", split, p) for p in entry["images"]}
    for split in ("train", "test"):
        for entry in load(catalog, f"datasets/Fashion200k/{split}_info.json"):
            referenced |= {os.path.join("datasets/Fashion200k/images", p) for p in entry["images"]}
    polyvore = "datasets/PolyvoreOutfits"
    referenced |= {f"{polyvore}/images/{i}.jpg" for i in load(catalog, f"{polyvore}/polyvore_item_metadata.json")}
    for entry in load(catalog, f"{polyvore}/train_info.json"):
        assert len(entry["images"]) == 1
        assert os.path.join(polyvore, "images", entry["images"][0]) in referenced
    for name in ("dress", "shirt", "toptee"):
        for split in ("train", "val"):
            referenced |= {f"datasets/FashionIQ/images/{a}.png"
                           for a in load(catalog, f"datasets/FashionIQ/image_splits/split.{name}.{split}.json")}
    on_disk = {p for p in all_files(catalog) if p.endswith((".png", ".jpg", ".jpeg"))}
    assert referenced == on_disk
    for path in on_disk:
        with Image.open(os.path.join(catalog, path)) as image:
            assert image.size == (SIZE, SIZE) and image.mode == "RGB", path
    assert load(catalog, "catalog.json")["images"] == len(on_disk)


def test_fashiongen_and_fashion200k_entries_follow_the_preprocessed_layout(catalog):
    manifest = load(catalog, "catalog.json")
    names = load(catalog, "datasets/FashionGen/categories.json")
    ids = []
    for split in ("train", "val"):
        entries = load(catalog, f"datasets/FashionGen/{split}_info.json")
        for entry in entries:
            assert set(entry) == {"id", "images", "title", "description", "attributes_id",
                                  "category_id", "subcategory_id"}
            assert isinstance(entry["id"], int) and all(isinstance(p, str) for p in entry["images"])
            assert all("/" not in p and p.startswith(f"{entry['id']}_") for p in entry["images"])
            assert isinstance(entry["title"], str) and isinstance(entry["description"], str)
            attributes = decode(catalog, entry["attributes_id"])
            category = names["category"][entry["category_id"]]
            assert attributes["category"] == category
            assert attributes["subcategory"] == names["subcategory"][entry["subcategory_id"]]
            assert attributes["subcategory"] in manifest["categories"][category]
            ids.append(entry["id"])
        # Stratified: every category's count within a split differs by at most one.
        counts = Counter(e["category_id"] for e in entries)
        expected = min(len(entries), len(names["category"]))
        assert len(counts) == expected and max(counts.values()) - min(counts.values()) <= 1
    assert len(ids) == len(set(ids)) == PRODUCTS
    assert manifest["counts"]["FashionGen"]["val"]["products"] == round(PRODUCTS * 0.2)
    for split in ("train", "test"):
        for entry in load(catalog, f"datasets/Fashion200k/{split}_info.json"):
            assert set(entry) == {"id", "images", "title", "attributes_id"}
            attributes = decode(catalog, entry["attributes_id"])
            assert attributes["category"] in ("dress", "jacket", "pants", "skirt", "top")
            assert len(entry["images"]) >= 2
            for path in entry["images"]:
                assert path.startswith(f"women/{attributes['category']}/{attributes['subcategory']}/")


def test_fashiongen_has_single_and_multi_view_products(catalog):
    views = [len(e["images"]) for split in ("train", "val")
             for e in load(catalog, f"datasets/FashionGen/{split}_info.json")]
    assert 1 in views and max(views) <= 4
    assert sum(v == 1 for v in views) <= len(views) // 4  # single-view products are a minority
    # The views of one product are different photos.
    for entry in load(catalog, "datasets/FashionGen/train_info.json"):
        photos = [open(os.path.join(catalog, "datasets/FashionGen/train", p), "rb").read() for p in entry["images"]]
        assert len(set(photos)) == len(photos)


def test_text_names_every_attribute_of_its_product(catalog):
    for split in ("train", "val"):
        for entry in load(catalog, f"datasets/FashionGen/{split}_info.json"):
            text = words(entry["title"] + ". " + entry["description"])
            for kind, value in decode(catalog, entry["attributes_id"]).items():
                assert value in text, (kind, value, entry)
    for entry in load(catalog, "datasets/PolyvoreOutfits/train_info.json"):
        text = words(entry["title"] + ". " + entry["description"])
        assert all(v in text for v in decode(catalog, entry["attributes_id"]).values())


def test_plain_products_show_their_colour_in_every_view(catalog):
    checked = 0
    for split in ("train", "val"):
        for entry in load(catalog, f"datasets/FashionGen/{split}_info.json"):
            attributes = decode(catalog, entry["attributes_id"])
            if attributes["pattern"] != "plain":
                continue
            for path in entry["images"]:
                with Image.open(os.path.join(catalog, "datasets/FashionGen", split, path)) as image:
                    pixels, _ = garment_pixels(image)
                assert nearest_colour(pixels.mean(0)) == attributes["colour"], path
                checked += 1
    assert checked > 0
    # Every category in every colour, through random views.
    rng = random.Random(0)
    for category in synthetic.CATEGORIES:
        for colour in synthetic.COLOURS:
            product = synthetic.sample_product(rng, category, colours=(colour,), patterned=False)
            pixels, _ = garment_pixels(synthetic.render_product(product, 48, synthetic.sample_view(rng)))
            assert nearest_colour(pixels.mean(0)) == colour, product


def test_patterns_are_visible_textures():
    def energies(pattern, view=synthetic.CANONICAL_VIEW):
        product = synthetic.Product("dress", "maxi", "red", pattern, "long", "round")
        image = synthetic.render_product(product, 64, view)
        array = np.asarray(image).astype(float)
        _, core = garment_pixels(image)
        inside_y, inside_x = core[1:] & core[:-1], core[:, 1:] & core[:, :-1]
        vertical = np.abs(np.diff(array, axis=0)).sum(-1)[inside_y].mean()
        horizontal = np.abs(np.diff(array, axis=1)).sum(-1)[inside_x].mean()
        return vertical, horizontal

    plain = energies("plain")
    assert max(plain) < 5  # a flat fill
    striped = energies("striped")
    assert striped[0] > 10 * (plain[0] + 1) and striped[0] > 3 * striped[1]  # horizontal stripes
    checked = energies("checked")
    assert min(checked) > 10 * (max(plain) + 1)
    for pattern in ("dotted", "floral"):
        assert min(energies(pattern)) > 5 * (max(plain) + 1)
    # The texture follows the garment: still striped along the rotated garment's axis.
    tilted = energies("striped", synthetic.View(angle=5.0, flip=True, scale=0.9))
    assert tilted[0] > 3 * tilted[1]


def test_silhouettes_show_length_sleeves_and_subcategory():
    def extent(product):
        _, core = garment_pixels(synthetic.render_product(product, 64))
        rows = np.nonzero(core.any(1))[0]
        return rows.max(), core

    dress = synthetic.Product("dress", "mini", "blue", "plain", "sleeveless", "round")
    lowest = [extent(dress._replace(subcategory=s))[0] for s in ("mini", "midi", "maxi")]
    assert lowest[0] < lowest[1] < lowest[2]
    skirt = synthetic.Product("skirt", "pencil", "green", "plain", length="mini")
    lowest = [extent(skirt._replace(length=s))[0] for s in ("mini", "midi", "maxi")]
    assert lowest[0] < lowest[1] < lowest[2]
    pants = synthetic.Product("pants", "jeans", "navy", "plain")
    assert extent(pants._replace(subcategory="shorts"))[0] < extent(pants)[0] - 20
    # Sleeves: width of the garment at chest height (below the shoulders).
    widths = [extent(dress._replace(sleeve=s))[1][26].sum() for s in ("sleeveless", "short", "long")]
    assert widths[0] < widths[2] and widths[0] < extent(dress._replace(sleeve="short"))[1][18].sum()
    # Different necklines and subcategories give different outlines.
    outlines = {n: extent(dress._replace(neckline=n))[1].tobytes() for n in synthetic.NECKLINES}
    assert len(set(outlines.values())) == len(synthetic.NECKLINES)
    for category, subcategories in synthetic.CATEGORIES.items():
        rng = random.Random(category)
        product = synthetic.sample_product(rng, category, patterned=False)
        shapes = {extent(product._replace(subcategory=s, sleeve="sleeveless" if s == "tank" else product.sleeve))[1].tobytes()
                  for s in subcategories}
        assert len(shapes) == len(subcategories), category


def test_fashioniq_targets_differ_in_exactly_what_the_captions_name(catalog):
    root = "datasets/FashionIQ"
    image_attributes = load(catalog, f"{root}/image_attributes.json")
    for name, category in (("dress", "dress"), ("shirt", "shirt"), ("toptee", "top")):
        splits = {}
        for split in ("train", "val"):
            images = load(catalog, f"{root}/image_splits/split.{name}.{split}.json")
            splits[split] = set(images)
            triplets = load(catalog, f"{root}/captions/cap.{name}.{split}.json")
            assert triplets and len(images) == len(set(images))
            for triplet in triplets:
                assert set(triplet) == {"candidate", "target", "captions"}
                assert {triplet["candidate"], triplet["target"]} <= splits[split]
                candidate = decode(catalog, image_attributes[triplet["candidate"]])
                target = decode(catalog, image_attributes[triplet["target"]])
                assert candidate["category"] == target["category"] == category
                changed = [k for k in target if target[k] != candidate.get(k)]
                assert 1 <= len(changed) <= 2 and set(candidate) == set(target)
                assert len(triplet["captions"]) == 2
                allowed = {target[k] for k in changed} | {candidate[k] for k in changed} | {category}
                for caption in triplet["captions"]:
                    caption_words = set(words(caption))
                    assert {target[k] for k in changed} <= caption_words, (caption, changed)
                    assert caption_words & set(synthetic.ATTRIBUTE_WORDS) <= allowed, caption
                if "colour" in changed and candidate["pattern"] == target["pattern"] == "plain":
                    for asin in (triplet["candidate"], triplet["target"]):
                        with Image.open(os.path.join(catalog, root, "images", asin + ".png")) as image:
                            pixels, _ = garment_pixels(image)
                        expected = (candidate if asin == triplet["candidate"] else target)["colour"]
                        assert nearest_colour(pixels.mean(0)) == expected
        assert not splits["train"] & splits["val"]


def test_polyvore_outfits_share_a_colour_family_and_hold_at_most_one_pattern(catalog):
    root = "datasets/PolyvoreOutfits"
    metadata = load(catalog, f"{root}/polyvore_item_metadata.json")
    family_of = {c: f for f, colours in synthetic.COLOUR_FAMILIES.items() for c in colours}
    for name in ("disjoint", "nondisjoint"):
        for split in ("train", "valid", "test"):
            outfits = load(catalog, f"{root}/{name}/{split}.json")
            assert outfits
            for outfit in outfits:
                assert set(outfit) == {"set_id", "items"} and isinstance(outfit["set_id"], str)
                assert [i["index"] for i in outfit["items"]] == list(range(1, len(outfit["items"]) + 1))
                titles = [words(metadata[i["item_id"]]["title"]) for i in outfit["items"]]
                assert len({family_of[t[0]] for t in titles}) == 1
                assert sum(bool(set(t) & set(synthetic.PATTERNS[1:])) for t in titles) <= 1
                semantic = [metadata[i["item_id"]]["semantic_category"] for i in outfit["items"]]
                assert "shoes" in semantic and len(set(semantic)) == len(semantic)
    for item in metadata.values():
        assert {"title", "description", "categories", "semantic_category", "category_id", "url_name"} <= set(item)
        assert isinstance(item["category_id"], int)
    category_ids = sorted({m["category_id"] for m in metadata.values()})
    assert category_ids[-1] > 10 * len(category_ids)  # sparse, as in the real metadata


def test_polyvore_ocir_questions_and_split_disjointness(catalog):
    root = "datasets/PolyvoreOutfits"
    metadata = load(catalog, f"{root}/polyvore_item_metadata.json")

    def outfit_items(name, split):
        return [frozenset(i["item_id"] for i in o["items"]) for o in load(catalog, f"{root}/{name}/{split}.json")]

    for name in ("disjoint", "nondisjoint"):
        train, valid, test = (outfit_items(name, s) for s in ("train", "valid", "test"))
        for split, outfits in (("train", train), ("test", test)):
            questions = load(catalog, f"{root}/ocir_{name}_{split}.json")
            assert questions
            for question in questions:
                assert set(question) == {"question", "blank"}
                assert question["blank"] not in question["question"]
                assert frozenset(question["question"] + [question["blank"]]) in outfits
                assert all(i in metadata for i in question["question"])
            if split == "train":  # every item of every train outfit is asked for once
                assert sorted((q["blank"], frozenset(q["question"])) for q in questions) == sorted(
                    (blank, items - {blank}) for items in outfits for blank in items)
            else:
                assert len(questions) == len(outfits)
        train_items, test_items = set().union(*train), set().union(*test) | set().union(*valid)
        if name == "disjoint":
            assert not train_items & test_items
        else:
            assert train_items & test_items
    pretraining = load(catalog, f"{root}/train_info.json")
    assert {str(e["id"]) for e in pretraining} == set().union(*outfit_items("disjoint", "train"))
    for entry in pretraining:
        assert set(entry) == {"id", "images", "title", "description", "attributes_id", "category_id"}
        assert entry["category_id"] == metadata[str(entry["id"])]["category_id"]


def test_vocabulary_tokenises_every_text_without_unknown_tokens(catalog):
    from transformers import BertTokenizer, BertTokenizerFast

    vocab_file = os.path.join(catalog, "vocab", "vocab.txt")
    lines = open(vocab_file, encoding="utf-8").read().splitlines()
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(lines) == len(set(lines))
    slow = BertTokenizer(vocab=vocab_file)
    loaded = BertTokenizerFast.from_pretrained(os.path.join(catalog, "vocab"))
    assert slow.unk_token_id == loaded.unk_token_id == 1 and len(loaded) == len(lines)
    split_words = 0
    for text in all_texts(catalog):
        ids = slow(text)["input_ids"]
        assert slow.unk_token_id not in ids, text
        assert loaded(text)["input_ids"] == ids
        split_words += sum(t.startswith("##") for t in slow.convert_ids_to_tokens(ids))
    assert split_words > 0  # WordPiece splitting is exercised ("sleeve ##s")


def test_nouns_and_adjectives_are_attribute_or_generic_words_and_filler_is_frequent(catalog, tmp_path):
    from mmf_fashionvil.tools.attributes import lexicon_tagger, mine_attributes

    lexicon = load(catalog, "vocab/pos_lexicon.json")
    texts = all_texts(catalog)
    counts = Counter(w for text in texts for w in words(text))
    assert set(counts) <= set(lexicon)  # the lexicon tags every word the texts use
    nouns_adjectives = {w for w, tag in lexicon.items() if tag.startswith(("NN", "JJ"))}
    assert nouns_adjectives == set(synthetic.ATTRIBUTE_WORDS) | set(synthetic.GENERIC_WORDS)
    assert not set(synthetic.FILLER_WORDS) & nouns_adjectives
    assert len(synthetic.GENERIC_WORDS) < len(synthetic.ATTRIBUTE_WORDS) / 3
    # Filler is frequent: most descriptions hold several filler tokens, and the most
    # frequent words are filler.
    filler = set(synthetic.FILLER_WORDS)
    assert {w for w, _ in counts.most_common(3)} <= filler
    descriptions = [e["description"] for e in load(catalog, "datasets/FashionGen/train_info.json")]
    assert all(sum(w in filler for w in words(d)) >= 3 for d in descriptions)
    # The PAC miner, tagging with the lexicon, keeps attribute words and no filler.
    summary = mine_attributes(str(catalog), str(tmp_path / "attributes"), min_count=3,
                              tag_fn=lexicon_tagger(lexicon))
    mined = set(summary["vocabulary"])
    assert mined <= nouns_adjectives and len(mined & set(synthetic.ATTRIBUTE_WORDS)) >= 20


def test_manifest_is_complete_and_written_last(catalog):
    manifest = load(catalog, "catalog.json")
    assert manifest["generator"] == "mmf_fashionvil.synthetic" and manifest["seed"] == 5
    assert manifest["products"] == PRODUCTS and manifest["image_size"] == SIZE
    assert manifest["attribute_words"] == sorted(manifest["attribute_words"])
    assert set(manifest["colours"]) == set(synthetic.COLOURS)
    fashiongen = manifest["counts"]["FashionGen"]
    for split in ("train", "val"):
        entries = load(catalog, f"datasets/FashionGen/{split}_info.json")
        assert fashiongen[split] == {"products": len(entries), "images": sum(len(e["images"]) for e in entries)}
    assert not os.path.exists(os.path.join(catalog, synthetic.INCOMPLETE_MARKER))


def test_refuses_foreign_folders_and_replaces_previous_or_interrupted_catalogs(tmp_path, monkeypatch):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to write into it"):
        synthetic.generate_catalog(foreign, num_products=5, image_size=16)
    assert os.listdir(foreign) == ["precious.txt"]
    (foreign / "catalog.json").write_text('{"generator": "someone else"}')
    with pytest.raises(FileExistsError, match=str(foreign)):
        synthetic.generate_catalog(foreign, num_products=5, image_size=16)

    # A crash leaves a marker and no manifest; the rerun replaces the partial catalog.
    out = tmp_path / "catalog"

    def crash(self):
        raise OSError("disk full")

    monkeypatch.setattr(writers._CatalogWriter, "fashioniq", crash)
    with pytest.raises(OSError, match="disk full"):
        synthetic.generate_catalog(out, num_products=5, image_size=16)
    assert (out / synthetic.INCOMPLETE_MARKER).exists() and not (out / "catalog.json").exists()
    monkeypatch.undo()
    (out / "datasets" / "FashionGen" / "stale.json").write_text("[]")
    (out / "attributes").mkdir()  # someone else's output next to the catalog: kept
    synthetic.generate_catalog(out, num_products=5, image_size=16)
    assert (out / "catalog.json").exists() and not (out / synthetic.INCOMPLETE_MARKER).exists()
    assert not (out / "datasets" / "FashionGen" / "stale.json").exists()
    assert (out / "attributes").is_dir()
    synthetic.generate_catalog(out, num_products=6, image_size=16)  # a complete one too
    assert load(out, "catalog.json")["products"] == 6


def test_bad_arguments_are_refused_and_the_cli_writes_a_catalog(tmp_path, capsys):
    with pytest.raises(ValueError, match="num_products"):
        synthetic.generate_catalog(tmp_path / "a", num_products=2)
    with pytest.raises(ValueError, match="image_size"):
        synthetic.generate_catalog(tmp_path / "a", image_size=8)
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--out", str(tmp_path / "b"), "--products", "1"])
    assert exit_info.value.code == 2 and "num_products" in capsys.readouterr().err
    synthetic.main(["--out", str(tmp_path / "c"), "--products", "7", "--image-size", "24", "--seed", "3"])
    assert "7 FashionGen products" in capsys.readouterr().out
    manifest = load(tmp_path / "c", "catalog.json")
    assert (manifest["seed"], manifest["products"], manifest["image_size"]) == (3, 7, 24)


def test_the_raw_format_writes_the_official_releases_files(catalog, tmp_path):
    """--format raw: FashionGen HDF5 files with the official dataset names, shapes and types,
    one row per view of the layout's products; Fashion200k label files (path, score,
    description) over the women/... tree; Polyvore's and FashionIQ's official files."""
    import h5py

    synthetic.main(["--out", str(tmp_path / "raw"), "--products", str(PRODUCTS), "--image-size",
                    str(SIZE), "--seed", "5", "--format", "raw"])
    raw = tmp_path / "raw"
    assert load(raw, "catalog.json")["format"] == "raw"
    for split, name in (("train", "train"), ("val", "validation")):
        entries = load(catalog, f"datasets/FashionGen/{split}_info.json")
        rows = [(e, view) for e in entries for view in range(len(e["images"]))]
        with h5py.File(raw / f"fashiongen/fashiongen_256_256_{name}.h5", "r") as f:
            assert f["input_image"].shape == (len(rows), SIZE, SIZE, 3)
            assert f["input_image"].dtype == np.uint8
            for column in ("input_name", "input_description", "input_category",
                           "input_subcategory", "input_pose"):
                assert f[column].shape == (len(rows), 1) and f[column].dtype.kind == "S"
            assert f["input_productID"][:, 0].tolist() == [e["id"] for e, _ in rows]
            assert [v.decode() for v in f["input_name"][:, 0]] == [e["title"] for e, _ in rows]
            entry, view = rows[-1]
            with Image.open(os.path.join(catalog, "datasets/FashionGen", split,
                                         entry["images"][view])) as image:
                assert np.array_equal(f["input_image"][-1], np.asarray(image.convert("RGB")))
    lines = []
    for category in ("dress", "jacket", "pants", "skirt", "top"):
        for split in ("train", "test"):
            text = (raw / f"fashion200k/labels/{category}_{split}_detect_all.txt").read_text()
            lines += [line.split("\t") for line in text.splitlines()]
    assert all(len(fields) == 3 and fields[0].startswith("women/") for fields in lines)
    assert all((raw / "fashion200k" / fields[0]).is_file() for fields in lines)
    images = sum(len(e["images"]) for split in ("train", "test")
                 for e in load(catalog, f"datasets/Fashion200k/{split}_info.json"))
    assert len(lines) == images
    for path in ("polyvore_outfits/polyvore_item_metadata.json", "polyvore_outfits/disjoint/train.json",
                 "fashioniq/captions/cap.dress.train.json", "vocab/vocab.txt"):
        assert (raw / path).is_file(), path
