"""Pseudo-attribute miner for PAC (SPEC §2): nouns and adjectives of the pre-training texts.

    python -m mmf_fashionvil.tools.attributes --data-dir DIR [--min-count 100] [--out DIR/attributes]

Reads the pre-processed layout (SPEC §4.1) under ``DIR/datasets/``: every ``<split>_info.json``
of FashionGen, Fashion200k and PolyvoreOutfits (a JSON list of ``{"id", "title",
"description"?, ...}``; text = title + ". " + description when there is one). Datasets whose
folder or train file is absent are skipped; at least one train file must exist.

Mining (train files only): tokenise, POS-tag, and count every lower-cased token tagged as a
noun (NN*) or adjective (JJ*) that contains a letter; the attributes are the words counted
MORE than ``min_count`` times (paper: > 100, 2,232 attributes).

Writes to the output folder:
- ``attributes.json``: ``{"vocabulary": [sorted words], "counts": {word: count},
  "settings": {...}, "label_files": {dataset: {split: file name}}}``; attribute index = position
  in ``vocabulary``.
- ``<dataset>_<split>_labels.json`` for every info file (train, val, test, ...):
  ``{"<sample id>": [sorted attribute indices]}``, the attributes whose word occurs as a token
  of the sample's text (whatever its tag there). Entries sharing an id get the union.

Tokeniser: NLTK's ``NLTKWordTokenizer`` (the word tokeniser inside ``nltk.word_tokenize``)
applied to sentences split at ``.``/``!``/``?`` by a regular expression. ``word_tokenize``
would split sentences with the Punkt model, which needs the ``punkt_tab`` data package; the
regex split needs no data and also separates the ``title.description`` joins found in the
authors' files. Only the tagger needs NLTK data: ``averaged_perceptron_tagger_eng`` (the name
NLTK >= 3.9 loads). ``--tagger lexicon --lexicon FILE`` replaces it with a fixed word -> Penn
tag table (JSON object), for catalogs whose vocabulary is known (e.g. the synthetic one) on
machines without NLTK data.
"""
import argparse
import json
import logging
import os
import re
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from mmf_fashionvil.data.captions import entry_text

logger = logging.getLogger(__name__)

PRETRAINING_DATASETS = ("FashionGen", "Fashion200k", "PolyvoreOutfits")
MINING_SPLIT = "train"
INFO_SUFFIX = "_info.json"
ATTRIBUTE_POS_PREFIXES = ("NN", "JJ")
NLTK_TAGGER_PACKAGE = "averaged_perceptron_tagger_eng"
LEXICON_UNKNOWN_TAG = "UNK"  # tag of words missing from a lexicon: never mined
DEFAULT_MIN_COUNT = 100
ATTRIBUTES_FILE = "attributes.json"

# Split after sentence punctuation unless a digit ("3.5") or more punctuation ("...") follows.
_SENTENCE_END = re.compile(r"(?<=[.!?])(?![.!?\d])")

TagFn = Callable[[List[str]], List[Tuple[str, str]]]


class AttributeMiningError(ValueError):
    """Unusable input for the attribute miner; the message names the file and the problem."""


def tokenize(text: str) -> List[str]:
    """Penn-Treebank-style tokens of `text` (see the module docstring)."""
    from nltk.tokenize import NLTKWordTokenizer

    word_tokenizer = NLTKWordTokenizer()
    return [
        token
        for sentence in _SENTENCE_END.split(text)
        for token in word_tokenizer.tokenize(sentence)
    ]


def nltk_tagger(data_dir: Optional[str] = None) -> TagFn:
    """NLTK's averaged perceptron tagger (what ``nltk.pos_tag`` uses for English), loaded
    once. Raises ``assets.MissingAssetError`` naming the package, the download command and
    NLTK_DATA when the tagger data is not installed."""
    from nltk.tag import PerceptronTagger

    from mmf_fashionvil.assets import require_nltk_data

    require_nltk_data((NLTK_TAGGER_PACKAGE,), data_dir=data_dir)
    return PerceptronTagger().tag


def lexicon_tagger(lexicon: Dict[str, str]) -> TagFn:
    """Tags each token with ``lexicon[token.lower()]`` (a Penn tag), or "UNK"."""
    table = {word.lower(): tag for word, tag in lexicon.items()}
    return lambda tokens: [(t, table.get(t.lower(), LEXICON_UNKNOWN_TAG)) for t in tokens]


def load_lexicon(path: str) -> Dict[str, str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Lexicon file '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            lexicon = json.load(f)
        except json.JSONDecodeError as e:
            raise AttributeMiningError(f"Lexicon file '{path}' is not valid JSON: {e}") from None
    if not isinstance(lexicon, dict) or not all(
        isinstance(w, str) and isinstance(t, str) for w, t in lexicon.items()
    ):
        raise AttributeMiningError(
            f"Lexicon file '{path}' must be a JSON object mapping words to Penn tags, "
            'e.g. {"red": "JJ", "dress": "NN", "with": "IN"}'
        )
    return lexicon


def read_info_file(path: str) -> List[Tuple[str, str]]:
    """(sample id as a string, text) of every entry of an info JSON file."""
    with open(path, encoding="utf-8") as f:
        try:
            entries = json.load(f)
        except json.JSONDecodeError as e:
            raise AttributeMiningError(f"Info file '{path}' is not valid JSON: {e}") from None
    if not isinstance(entries, list):
        raise AttributeMiningError(f"Info file '{path}': expected a JSON list of entries")
    samples = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or "title" not in entry:
            raise AttributeMiningError(
                f"Info file '{path}': entry {position} must be an object with 'id' and 'title'"
            )
        samples.append((str(entry["id"]), entry_text(entry)))
    return samples


def find_info_files(data_dir: str) -> Dict[str, Dict[str, str]]:
    """{dataset: {split: path}} for the pre-training datasets that have a train file."""
    datasets_dir = os.path.join(data_dir, "datasets")
    found = {}
    for dataset in PRETRAINING_DATASETS:
        folder = os.path.join(datasets_dir, dataset)
        if not os.path.isfile(os.path.join(folder, MINING_SPLIT + INFO_SUFFIX)):
            continue
        found[dataset] = {
            name[: -len(INFO_SUFFIX)]: os.path.join(folder, name)
            for name in sorted(os.listdir(folder))
            if name.endswith(INFO_SUFFIX)
        }
    if not found:
        expected = ", ".join(
            os.path.join(datasets_dir, d, MINING_SPLIT + INFO_SUFFIX) for d in PRETRAINING_DATASETS
        )
        raise FileNotFoundError(
            f"No pre-training texts under '{datasets_dir}': none of {expected} exists"
        )
    return found


def count_attribute_words(texts: Iterable[str], tag_fn: TagFn) -> Counter:
    """Occurrences of each lower-cased noun/adjective token containing a letter."""
    counts = Counter()
    for text in texts:
        for token, tag in tag_fn(tokenize(text)):
            if tag.startswith(ATTRIBUTE_POS_PREFIXES) and any(c.isalpha() for c in token):
                counts[token.lower()] += 1
    return counts


def select_attributes(counts: Counter, min_count: int) -> List[str]:
    """Sorted words counted strictly more than `min_count` times."""
    return sorted(word for word, count in counts.items() if count > min_count)


def attribute_labels(
    samples: Sequence[Tuple[str, str]], vocabulary: Sequence[str]
) -> Dict[str, List[int]]:
    """{sample id: sorted indices of the vocabulary words among its text's tokens}."""
    index = {word: i for i, word in enumerate(vocabulary)}
    labels: Dict[str, set] = {}
    for sample_id, text in samples:
        found = {index[t.lower()] for t in tokenize(text) if t.lower() in index}
        labels.setdefault(sample_id, set()).update(found)
    return {sample_id: sorted(found) for sample_id, found in labels.items()}


def mine_attributes(
    data_dir: str,
    out_dir: Optional[str] = None,
    min_count: int = DEFAULT_MIN_COUNT,
    tag_fn: Optional[TagFn] = None,
    tagger_name: str = "nltk:" + NLTK_TAGGER_PACKAGE,
) -> dict:
    """Mines the attribute vocabulary and writes all label files (see the module docstring).

    ``tag_fn(tokens) -> [(token, Penn tag)]`` defaults to :func:`nltk_tagger`;
    ``tagger_name`` records it in the settings. Returns the content of attributes.json.
    """
    if min_count < 0:
        raise AttributeMiningError(f"min_count must be >= 0, got {min_count}")
    out_dir = out_dir or os.path.join(data_dir, "attributes")
    info_files = find_info_files(data_dir)
    if tag_fn is None:
        tag_fn = nltk_tagger()
    samples = {
        (dataset, split): read_info_file(path)
        for dataset, splits in info_files.items()
        for split, path in splits.items()
    }

    counts = Counter()
    for dataset in info_files:
        train_samples = samples[(dataset, MINING_SPLIT)]
        logger.info("Tagging %d %s train texts", len(train_samples), dataset)
        counts.update(count_attribute_words((text for _, text in train_samples), tag_fn))
    vocabulary = select_attributes(counts, min_count)
    if not vocabulary:
        raise AttributeMiningError(
            f"No noun or adjective occurs more than {min_count} times in the train texts of "
            f"{sorted(info_files)} under '{data_dir}'; lower --min-count"
        )

    os.makedirs(out_dir, exist_ok=True)
    label_files: Dict[str, Dict[str, str]] = {}
    for (dataset, split), split_samples in samples.items():
        name = f"{dataset}_{split}_labels.json"
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(attribute_labels(split_samples, vocabulary), f)
        label_files.setdefault(dataset, {})[split] = name

    summary = {
        "vocabulary": vocabulary,
        "counts": {word: counts[word] for word in vocabulary},
        "settings": {
            "min_count": min_count,
            "rule": "count > min_count",
            "pos_prefixes": list(ATTRIBUTE_POS_PREFIXES),
            "tokenizer": "regex sentence split + nltk NLTKWordTokenizer, lower-cased",
            "tagger": tagger_name,
            "mined_from": {
                dataset: {
                    "file": splits[MINING_SPLIT],
                    "texts": len(samples[(dataset, MINING_SPLIT)]),
                }
                for dataset, splits in info_files.items()
            },
        },
        "label_files": label_files,
    }
    with open(os.path.join(out_dir, ATTRIBUTES_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mmf_fashionvil.tools.attributes",
        description="Mine PAC pseudo-attributes (frequent nouns and adjectives) from the "
        "pre-training texts and write per-sample attribute labels.",
    )
    parser.add_argument("--data-dir", required=True, help="folder holding datasets/")
    parser.add_argument("--min-count", type=int, default=DEFAULT_MIN_COUNT,
                        help="keep words seen MORE than this many times (default 100)")
    parser.add_argument("--out", help="output folder (default DATA_DIR/attributes)")
    parser.add_argument("--tagger", choices=("nltk", "lexicon"), default="nltk",
                        help="nltk: NLTK's perceptron tagger (needs the "
                        f"{NLTK_TAGGER_PACKAGE} data); lexicon: a fixed table (--lexicon)")
    parser.add_argument("--lexicon", help="JSON object word -> Penn tag, for --tagger lexicon")
    parser.add_argument("--nltk-data", help="folder with NLTK data (added to NLTK's search path; "
                        "the NLTK_DATA environment variable works too)")
    args = parser.parse_args(argv)
    if (args.tagger == "lexicon") != (args.lexicon is not None):
        parser.error("--lexicon FILE is required with --tagger lexicon and only then")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from mmf_fashionvil.assets import MissingAssetError

    try:
        if args.tagger == "lexicon":
            tag_fn = lexicon_tagger(load_lexicon(args.lexicon))
            tagger_name = f"lexicon:{args.lexicon}"
        else:
            tag_fn, tagger_name = nltk_tagger(args.nltk_data), "nltk:" + NLTK_TAGGER_PACKAGE
        summary = mine_attributes(args.data_dir, args.out, args.min_count, tag_fn, tagger_name)
    except (AttributeMiningError, MissingAssetError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    out_dir = args.out or os.path.join(args.data_dir, "attributes")
    summary_path = os.path.join(out_dir, ATTRIBUTES_FILE)
    print(f"{len(summary['vocabulary'])} attributes written to {summary_path}")


if __name__ == "__main__":
    main()
