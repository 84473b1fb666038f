import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from mmf_fashionvil.assets import MissingAssetError
from mmf_fashionvil.tools.attributes import (
    AttributeMiningError,
    main,
    mine_attributes,
    tokenize,
)

# A tiny catalog vocabulary with its Penn tags: what NLTK's tagger would say of these words.
COLOURS = ["red", "blue", "black", "white", "green"]
PATTERNS = ["striped", "dotted", "checked", "plain"]
GARMENTS = ["dress", "shirt", "skirt", "jacket"]
MATERIALS = ["cotton", "silk", "linen"]
FILLER_TAGS = {"a": "DT", "very": "RB", "soft": "JJ", "made": "VBN", "of": "IN", "with": "IN",
               "care": "NN", "100": "CD", "%": "NN", ".": ".", ",": ","}
LEXICON = {
    **{w: "JJ" for w in COLOURS + PATTERNS},
    **{w: "NN" for w in GARMENTS + MATERIALS},
    **FILLER_TAGS,
}
MIN_COUNT = 20
NUM_SILK, NUM_LINEN = MIN_COUNT + 1, MIN_COUNT  # strictly more than MIN_COUNT is kept


def lexicon_tag(tokens):
    """Deterministic stand-in for NLTK's tagger: the lexicon, case-insensitive."""
    return [(token, LEXICON.get(token.lower(), "FW")) for token in tokens]


def write_catalog(data_dir, with_polyvore=False):
    """FashionGen train/val and Fashion200k train/test info files; returns the occurrence
    count of every word in the train texts, tallied while composing them."""
    rng = random.Random(0)
    counts = Counter()

    def product(split_counts, i, with_description, material=None):
        colour, pattern, garment = rng.choice(COLOURS), rng.choice(PATTERNS), rng.choice(GARMENTS)
        title_words = [colour, pattern, garment]
        entry = {"id": i, "images": [f"{i}.jpg"], "title": " ".join(title_words).capitalize()}
        words = list(title_words)
        if with_description:
            # "100% cotton": "%" is tagged NN by NLTK, yet is no attribute word.
            description = ["a", "very", "soft", colour, garment, "made", "of", "100", "%", "cotton"]
            if material:
                description += ["with", material]
            entry["description"] = "A very soft {} {} made of 100% cotton{}.".format(
                colour, garment, f" with {material}" if material else ""
            )
            words += description
        if split_counts is not None:
            split_counts.update(words)
        return entry

    materials = ["silk"] * NUM_SILK + ["linen"] * NUM_LINEN
    fashiongen_train = [
        product(counts, i, True, materials[i] if i < len(materials) else None) for i in range(60)
    ]
    fashiongen_val = [
        {"id": 1000, "images": ["a.jpg"], "title": "Red striped dress"},
        {"id": 1001, "images": ["b.jpg"], "title": "Linen shirt", "description": "made with care"},
        {"id": 1002, "images": ["c.jpg"], "title": "Blue jacket"},
        {"id": 1002, "images": ["d.jpg"], "title": "Dotted skirt"},
    ]
    fashion200k_train = [product(counts, 5000 + i, False) for i in range(40)]
    fashion200k_test = [product(None, 9000 + i, False) for i in range(5)]
    files = {
        ("FashionGen", "train"): fashiongen_train,
        ("FashionGen", "val"): fashiongen_val,
        ("Fashion200k", "train"): fashion200k_train,
        ("Fashion200k", "test"): fashion200k_test,
    }
    if with_polyvore:
        files[("PolyvoreOutfits", "train")] = [
            {"id": "p1", "title": "Green plain skirt", "description": ""}
        ]
        counts.update(["green", "plain", "skirt"])
    for (dataset, split), entries in files.items():
        folder = os.path.join(data_dir, "datasets", dataset)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{split}_info.json"), "w") as f:
            json.dump(entries, f)
    # An absent dataset folder (PolyvoreOutfits) is skipped; a folder without train file too.
    os.makedirs(os.path.join(data_dir, "datasets", "BigFACAD"), exist_ok=True)
    return counts


def expected_vocabulary(counts):
    return sorted(
        w for w, c in counts.items() if LEXICON.get(w, "").startswith(("NN", "JJ"))
        and w.isalpha() and c > MIN_COUNT
    )


def read(path):
    with open(path) as f:
        return json.load(f)


def test_tokenize_separates_title_and_description_and_keeps_numbers():
    text = "Red Dress.A long dress in 3.5 oz cotton, women's fit... Lace-up boots!Great"
    assert tokenize(text) == [
        "Red", "Dress", ".", "A", "long", "dress", "in", "3.5", "oz", "cotton", ",", "women",
        "'s", "fit", "...", "Lace-up", "boots", "!", "Great",
    ]


def test_miner_keeps_frequent_nouns_and_adjectives_only(tmp_path):
    counts = write_catalog(tmp_path)
    summary = mine_attributes(str(tmp_path), min_count=MIN_COUNT, tag_fn=lexicon_tag)
    vocabulary = summary["vocabulary"]
    assert vocabulary == expected_vocabulary(counts)
    assert set(COLOURS + PATTERNS + GARMENTS + ["cotton", "silk", "soft"]) == set(vocabulary)
    assert "linen" not in vocabulary  # seen exactly MIN_COUNT times
    assert counts["silk"] == MIN_COUNT + 1 and counts["linen"] == MIN_COUNT
    assert not set(vocabulary) & {"a", "very", "made", "of", "100", "%"}
    assert summary["counts"] == {w: counts[w] for w in vocabulary}
    assert read(tmp_path / "attributes" / "attributes.json") == summary
    assert summary["settings"]["min_count"] == MIN_COUNT
    assert set(summary["settings"]["mined_from"]) == {"FashionGen", "Fashion200k"}
    assert summary["settings"]["mined_from"]["FashionGen"]["texts"] == 60


def test_labels_point_to_the_words_of_each_text(tmp_path):
    write_catalog(tmp_path)
    out = tmp_path / "mined"
    summary = mine_attributes(str(tmp_path), str(out), MIN_COUNT, lexicon_tag)
    vocabulary = summary["vocabulary"]
    assert summary["label_files"] == {
        "FashionGen": {
            "train": "FashionGen_train_labels.json", "val": "FashionGen_val_labels.json"
        },
        "Fashion200k": {
            "train": "Fashion200k_train_labels.json", "test": "Fashion200k_test_labels.json"
        },
    }
    assert sorted(os.listdir(out)) == sorted(
        ["attributes.json", "FashionGen_train_labels.json", "FashionGen_val_labels.json",
         "Fashion200k_train_labels.json", "Fashion200k_test_labels.json"]
    )
    val = read(out / "FashionGen_val_labels.json")
    assert val["1000"] == sorted(vocabulary.index(w) for w in ("red", "striped", "dress"))
    assert val["1001"] == [vocabulary.index("shirt")]  # linen and care are not attributes
    # Two entries with one id: the union of their attributes.
    assert val["1002"] == sorted(vocabulary.index(w) for w in ("blue", "jacket", "dotted", "skirt"))

    info = read(tmp_path / "datasets" / "FashionGen" / "train_info.json")
    train = read(out / "FashionGen_train_labels.json")
    assert set(train) == {str(e["id"]) for e in info}
    for entry in info:
        words = set(entry["title"].lower().split()) | set(
            entry.get("description", "").lower().replace(".", " ").split()
        )
        assert [vocabulary[i] for i in train[str(entry["id"])]] == sorted(words & set(vocabulary))
    assert len(read(out / "Fashion200k_test_labels.json")) == 5


def test_polyvore_texts_are_mined_when_present(tmp_path):
    counts = write_catalog(tmp_path, with_polyvore=True)
    summary = mine_attributes(str(tmp_path), min_count=MIN_COUNT, tag_fn=lexicon_tag)
    assert summary["vocabulary"] == expected_vocabulary(counts)
    assert summary["counts"]["green"] == counts["green"]
    assert "PolyvoreOutfits" in summary["settings"]["mined_from"]
    assert read(tmp_path / "attributes" / "PolyvoreOutfits_train_labels.json")["p1"] == sorted(
        summary["vocabulary"].index(w) for w in ("green", "plain", "skirt")
    )


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="FashionGen/train_info.json"):
        mine_attributes(str(tmp_path), tag_fn=lexicon_tag)
    write_catalog(tmp_path)
    with pytest.raises(AttributeMiningError, match="lower --min-count"):
        mine_attributes(str(tmp_path), min_count=10**6, tag_fn=lexicon_tag)
    bad = tmp_path / "datasets" / "Fashion200k" / "test_info.json"
    bad.write_text(json.dumps([{"id": 1}]))
    with pytest.raises(AttributeMiningError, match=r"test_info.json.*entry 0.*'title'"):
        mine_attributes(str(tmp_path), min_count=MIN_COUNT, tag_fn=lexicon_tag)
    bad.write_text("{not json")
    with pytest.raises(AttributeMiningError, match="test_info.json.*not valid JSON"):
        mine_attributes(str(tmp_path), min_count=MIN_COUNT, tag_fn=lexicon_tag)


@pytest.fixture
def isolated_nltk_path(monkeypatch, tmp_path):
    """NLTK searches only an empty folder (restored after the test)."""
    import nltk

    empty = tmp_path / "empty_nltk_data"
    empty.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(empty)])
    return empty


def test_missing_nltk_tagger_data_names_the_package_and_the_fix(tmp_path, isolated_nltk_path):
    write_catalog(tmp_path)
    with pytest.raises(MissingAssetError) as error:
        mine_attributes(str(tmp_path), min_count=MIN_COUNT)
    message = str(error.value)
    assert "averaged_perceptron_tagger_eng" in message
    assert "python -m nltk.downloader" in message and "NLTK_DATA" in message
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(tmp_path), "--min-count", str(MIN_COUNT)])
    assert "averaged_perceptron_tagger_eng" in str(exit_info.value.code)
    assert not (tmp_path / "attributes").exists()


def test_cli_runs_nltks_real_tagger_loading_path(tmp_path, isolated_nltk_path):
    """A hand-built perceptron model saved in NLTK's data layout, found via --nltk-data and
    run by nltk's PerceptronTagger: the default path minus the downloaded weights."""
    from nltk.tag import PerceptronTagger

    counts = write_catalog(tmp_path)
    tagger = PerceptronTagger(load=False)
    tagger.tagdict = {**LEXICON, **{w.capitalize(): t for w, t in LEXICON.items()}}
    tagger.classes = tagger.model.classes = set(LEXICON.values())
    nltk_data = tmp_path / "nltk_data"
    model_dir = nltk_data / "taggers" / "averaged_perceptron_tagger_eng"
    model_dir.mkdir(parents=True)
    for param, name in zip(tagger.encode_json_obj(), tagger.param_files("eng")):
        (model_dir / name).write_text(json.dumps(param))

    main(["--data-dir", str(tmp_path), "--min-count", str(MIN_COUNT),
          "--nltk-data", str(nltk_data)])
    summary = read(tmp_path / "attributes" / "attributes.json")
    assert summary["vocabulary"] == expected_vocabulary(counts)
    assert summary["settings"]["tagger"] == "nltk:averaged_perceptron_tagger_eng"


def test_cli_lexicon_tagger(tmp_path):
    counts = write_catalog(tmp_path)
    lexicon = tmp_path / "lexicon.json"
    lexicon.write_text(json.dumps({w.upper(): t for w, t in LEXICON.items()}))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "mmf_fashionvil.tools.attributes", "--data-dir", str(tmp_path),
         "--min-count", str(MIN_COUNT), "--out", str(out), "--tagger", "lexicon",
         "--lexicon", str(lexicon)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    summary = read(out / "attributes.json")
    assert summary["vocabulary"] == expected_vocabulary(counts)
    assert f"{len(summary['vocabulary'])} attributes written" in result.stdout

    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(tmp_path), "--tagger", "lexicon"])
    assert exit_info.value.code == 2
    lexicon.write_text(json.dumps(["red", "JJ"]))
    with pytest.raises(SystemExit, match="lexicon.json.*JSON object mapping words"):
        main(["--data-dir", str(tmp_path), "--tagger", "lexicon", "--lexicon", str(lexicon)])
