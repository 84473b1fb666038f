"""A data dir written by hand in the authors' layout (SPEC §4.1), without the project's
generator: info files whose image paths are relative to the split's image folder
(FashionGen/train, FashionGen/val), carrying the authors' extra keys, train and evaluate
FashionGen retrieval through mmf_run; missing keys are named."""
import json

import pytest
from PIL import Image

from helpers import MMF_RUN, final_metrics, run_command, short_run_args

XMR_TINY = "projects/fashionvil/configs/finetuning/xmr_tiny.yaml"
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 160, 30),
           "black": (20, 20, 20), "white": (240, 240, 240), "yellow": (230, 210, 40)}
GARMENTS = ["dress", "shirt"]
WORDS = sorted(set(COLOURS) | set(GARMENTS) | {"a", "plain", "cotton", "."})


def write_authors_fashiongen(data_dir, extra=None):
    """FashionGen/{train,val}_info.json as the authors released them: ``images`` holds file
    names inside FashionGen/train or FashionGen/val; extra keys attributes_id, fake_data."""
    root = data_dir / "datasets" / "FashionGen"
    product_id = 5000
    for split, count in (("train", 12), ("val", 6)):
        (root / split).mkdir(parents=True)
        entries = []
        for index in range(count):
            colour = list(COLOURS)[index % len(COLOURS)]
            garment = GARMENTS[index % 2]
            names = []
            for view in range(1 + index % 2):
                name = f"{product_id}_{view}.jpg"
                Image.new("RGB", (64, 64), COLOURS[colour]).save(root / split / name)
                names.append(name)
            entries.append({"id": product_id, "images": names, "title": f"{colour} {garment}",
                            "description": "a plain cotton " + garment, "attributes_id": [index % 3],
                            "category_id": index % 2, "subcategory_id": 10 + index % 2,
                            "fake_data": False, **(extra or {})})
            product_id += 1
        (root / f"{split}_info.json").write_text(json.dumps(entries))
    vocab = data_dir / "vocab"
    vocab.mkdir()
    (vocab / "vocab.txt").write_text("\n".join(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return root


def test_fashiongen_retrieval_trains_and_evaluates_on_the_authors_layout(tmp_path):
    write_authors_fashiongen(tmp_path / "data")
    # No image at the dataset root: paths resolve against the split folders only.
    assert not list((tmp_path / "data/datasets/FashionGen").glob("*.jpg"))
    save_dir = tmp_path / "save"
    code, output = run_command([MMF_RUN, f"config={XMR_TINY}", *short_run_args("fashiongen", 2),
                                f"env.data_dir={tmp_path / 'data'}", f"env.save_dir={save_dir}"])
    assert code == 0, output[-4000:]
    metrics = final_metrics(save_dir, "val")

    def metric(suffix):
        (value,) = [v for k, v in metrics.items() if k.endswith(suffix)]
        return value

    # 6 val products (9 images): every val product is ranked, R@1 <= R@10 = 100 (6 < 10).
    for direction in ("itr", "tir"):
        assert 0 <= metric(f"general/{direction}_r@1") <= metric(f"general/{direction}_r@10") == 100
    assert (save_dir / "current.ckpt").is_file()


@pytest.mark.parametrize("key", ["images", "title"])
def test_a_missing_key_names_the_file_the_entry_and_the_key(tmp_path, key):
    import mmf  # noqa: F401  (compat before our data modules)
    from mmf_fashionvil.data.base import DataError
    from mmf_fashionvil.data.fashiongen.builder import FashionGenBuilder

    from helpers import build_dataset, catalog_dataset_config

    root = write_authors_fashiongen(tmp_path)
    entries = json.loads((root / "val_info.json").read_text())
    del entries[2][key]
    (root / "val_info.json").write_text(json.dumps(entries))
    with pytest.raises(DataError, match=rf"val_info.json: entry {entries[2]['id']} lacks key\(s\) "
                                        rf"\['{key}'\]") as error:
        build_dataset(FashionGenBuilder, catalog_dataset_config(FashionGenBuilder, tmp_path), "val")
    assert str(root / "val_info.json") in str(error.value)


def test_the_authors_extra_keys_stay_in_the_products(tmp_path):
    import mmf  # noqa: F401
    from mmf_fashionvil.data.fashiongen.builder import FashionGenBuilder

    from helpers import build_dataset, catalog_dataset_config

    root = write_authors_fashiongen(tmp_path, extra={"garment_class": "top"})
    train = build_dataset(FashionGenBuilder, catalog_dataset_config(FashionGenBuilder, tmp_path),
                          "train")
    first = train.database.products[0]
    assert first["attributes_id"] == [0] and first["garment_class"] == "top"
    assert first["fake_data"] is False
    assert first["images"] == [str(root / "train" / "5000_0.jpg")]
