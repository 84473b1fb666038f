"""Bad data is named: images of every PIL mode become the right RGB pixels, and oversized
images, duplicate product ids, non-integer category ids, non-UTF-8 annotation files, bad
PAC attribute labels and image paths leaving the image folder are DataErrors naming the
file, the entry and the field."""
import json
import os
import shutil
import struct
import warnings
import zlib

import mmf  # noqa: F401  (compat must patch rc10 before our data modules import it)
import pytest
from PIL import Image

from mmf_fashionvil.data.base import (
    DEFAULT_MAX_IMAGE_PIXELS, DataError, ProductDatabase, load_image,
)
from mmf_fashionvil.data.fashiongen.builder import FashionGenBuilder
from mmf_fashionvil.data.fashioniq.builder import FashionIQBuilder
from mmf_fashionvil.data.polyvore.builder import PolyvoreOCIRBuilder
from mmf_fashionvil.data.pretraining.builder import FashionPretrainingBuilder

from helpers import build_dataset, catalog_dataset_config

WHITE = (255, 255, 255)


# --------------------------------------------------------------------------- helpers
def image_row(mode, pixels, palette=None):
    """A 1-pixel-high image of ``mode`` holding ``pixels`` from left to right."""
    image = Image.new(mode, (len(pixels), 1))
    if palette is not None:
        image.putpalette(palette)
    for x, pixel in enumerate(pixels):
        image.putpixel((x, 0), pixel)
    return image


def write_info(folder, products, name="train_info.json"):
    """Writes ``products`` (dicts completed with a title and one image) as an info file."""
    entries = [dict({"title": "red dress", "images": ["a.png"]}, **p) for p in products]
    (folder / name).write_text(json.dumps(entries))
    return folder / name


def png_header(path, width, height):
    """A PNG of which only the header (IHDR) is written: enough for PIL to see its size
    without decoding (or allocating) any pixel."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def catalog(tiny_catalog, tmp_path):
    """A private copy of the tiny catalog, for tests that break it."""
    shutil.copytree(tiny_catalog, tmp_path / "catalog")
    return tmp_path / "catalog"


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------ 1. image conversion
# Expected pixels by hand: alpha a over white gives c * a / 255 + 255 * (1 - a / 255), so
# half-transparent (128) red is (255, 127, 127); 16-bit grey v gives v >> 8; CMYK gives
# 255 * (1 - c / 255) * (1 - k / 255) per channel.
IMAGE_CASES = {
    "16-bit grey (I;16)": (
        lambda: image_row("I;16", [0, 25700, 32768, 65535]), "png",
        [(0,) * 3, (100,) * 3, (128,) * 3, (255,) * 3]),
    "32-bit grey (I) holding 16-bit values": (
        lambda: image_row("I", [0, 25700, 65535, 70000]), "tiff",
        [(0,) * 3, (100,) * 3, (255,) * 3, (255,) * 3]),
    "palette": (
        lambda: image_row("P", [0, 1], palette=[255, 0, 0, 10, 20, 30]), "png",
        [(255, 0, 0), (10, 20, 30)]),
    "palette with a transparent index": (
        lambda: image_row("P", [0, 1], palette=[255, 0, 0, 0, 0, 255]), "png",
        [WHITE, (0, 0, 255)], {"transparency": 0}),
    "palette with per-index alpha": (
        lambda: image_row("P", [0, 1], palette=[255, 0, 0, 0, 0, 255]), "png",
        [(255, 127, 127), (0, 0, 255)], {"transparency": bytes([128, 255])}),
    "CMYK": (
        lambda: image_row("CMYK", [(128, 0, 0, 128), (0, 0, 0, 0), (0, 255, 0, 0)]), "tiff",
        [(63, 127, 127), WHITE, (255, 0, 255)]),
    "grey (L)": (
        lambda: image_row("L", [0, 77, 255]), "png", [(0,) * 3, (77,) * 3, (255,) * 3]),
    "grey with alpha (LA)": (
        lambda: image_row("LA", [(100, 255), (100, 0), (0, 128)]), "png",
        [(100,) * 3, WHITE, (127,) * 3]),
    "RGBA": (
        lambda: image_row("RGBA", [(255, 0, 0, 128), (0, 0, 0, 0), (10, 20, 30, 255)]), "png",
        [(255, 127, 127), WHITE, (10, 20, 30)]),
    "RGB with a transparent colour": (
        lambda: image_row("RGB", [(0, 255, 0), (1, 2, 3)]), "png",
        [WHITE, (1, 2, 3)], {"transparency": (0, 255, 0)}),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_every_image_mode_gives_the_right_rgb_pixels(tmp_path, case):
    make, suffix, expected, *save_options = IMAGE_CASES[case]
    path = tmp_path / f"image.{suffix}"
    make().save(path, **(save_options[0] if save_options else {}))
    image = load_image(str(path))
    assert image.mode == "RGB"
    pixels = [image.getpixel((x, 0)) for x in range(image.width)]
    for got, want in zip(pixels, expected):
        assert all(abs(g - w) <= 1 for g, w in zip(got, want)), (case, pixels, expected)


# ------------------------------------------------------------------- 2. oversized images
def test_an_image_past_the_configured_pixel_limit_is_named(tiny_catalog):
    config = catalog_dataset_config(FashionGenBuilder, tiny_catalog, max_image_pixels=100)
    val = build_dataset(FashionGenBuilder, config, "val")
    first = read(os.path.join(tiny_catalog, "datasets/FashionGen/val_info.json"))[0]
    with pytest.raises(DataError, match="max_image_pixels=100 .*it is 64x64") as error:
        val[0]
    assert os.path.join(tiny_catalog, "datasets/FashionGen/val", first["images"][0]) in str(error.value)


def test_a_decompression_bomb_is_named_without_being_decoded(tmp_path):
    huge = png_header(tmp_path / "huge.png", 14000, 14000)  # past twice PIL's own limit
    with pytest.raises(DataError, match=f"max_image_pixels={DEFAULT_MAX_IMAGE_PIXELS}") as error:
        load_image(str(huge))
    assert str(huge) in str(error.value)
    # Past PIL's limit but under twice it: PIL would only warn; our limit refuses, quietly.
    large = png_header(tmp_path / "large.png", 12000, 8000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="it is 12000x8000"):
            load_image(str(large))


# ----------------------------------------------------------------- 3. duplicate product ids
def test_a_product_id_twice_in_an_info_file_is_named(tmp_path):
    path = write_info(tmp_path, [{"id": 4}, {"id": 5}, {"id": 4, "title": "blue shirt"}])
    with pytest.raises(DataError, match="product id 4 appears twice, in entries 0 and 2") as error:
        ProductDatabase(str(tmp_path), "train_info.json")
    assert str(path) in str(error.value)


# ------------------------------------------------------------------ 4. category ids
def test_a_digit_string_category_id_is_accepted(tmp_path):
    write_info(tmp_path, [{"id": 5, "category_id": "3", "subcategory_id": 12}])
    (product,) = ProductDatabase(str(tmp_path), "train_info.json").products
    assert (product["category_id"], product["subcategory_id"]) == (3, 12)


@pytest.mark.parametrize("field, value", [("category_id", "tops"), ("category_id", "-3"),
                                          ("subcategory_id", 2.5), ("subcategory_id", True)])
def test_a_non_integer_category_id_is_named(tmp_path, field, value):
    path = write_info(tmp_path, [{"id": 5, field: value}])
    with pytest.raises(DataError, match=f"product 5 has a non-integer {field}") as error:
        ProductDatabase(str(tmp_path), "train_info.json")
    assert str(path) in str(error.value)


# ------------------------------------------------------------------ 5. non-UTF-8 files
def test_a_latin1_annotation_file_is_named_with_the_byte_offset(tmp_path):
    content = '[{"id": 1, "images": ["a.png"], "title": "caf\xe9 dress"}]'.encode("latin-1")
    (tmp_path / "train_info.json").write_bytes(content)
    offset = content.index(b"\xe9")
    with pytest.raises(DataError, match=f"byte 0xe9 at byte offset {offset} .*must be UTF-8") \
            as error:
        ProductDatabase(str(tmp_path), "train_info.json")
    assert str(tmp_path / "train_info.json") in str(error.value)


# ------------------------------------------------------------ 6. PAC attribute labels
@pytest.mark.parametrize(
    "vocabulary, labels, bad_file, message",
    [
        ({"vocabulary": ["dress", "red", "striped"]}, [-1], "labels",
         r"product {id}: attribute label\(s\) \[-1\] outside \[0, 3\)"),
        ({"vocabulary": ["dress", "red", "striped"]}, [0, 3], "labels",
         r"product {id}: attribute label\(s\) \[3\] outside \[0, 3\)"),
        ({"vocabulary": ["dress", "red", "striped"]}, "1", "labels",
         r"product {id}: attribute labels '1' are not a list of integers"),
        (["dress", "red", "striped"], [0], "vocabulary",
         r'expected \{"vocabulary": \[attribute words\], \.\.\.\}'),
        ({"vocabulary": ["dress", 2]}, [0], "vocabulary",
         r"vocabulary entry 1 \(2\) is not a string"),
    ],
)
def test_bad_pac_attribute_files_are_named(tiny_catalog, tmp_path, vocabulary, labels,
                                           bad_file, message):
    product = read(os.path.join(tiny_catalog, "datasets/FashionGen/train_info.json"))[0]
    (tmp_path / "attributes.json").write_text(json.dumps(vocabulary))
    (tmp_path / "FashionGen_train_labels.json").write_text(json.dumps({str(product["id"]): labels}))
    for source in ("Fashion200k", "PolyvoreOutfits"):
        (tmp_path / f"{source}_train_labels.json").write_text("{}")
    config = catalog_dataset_config(FashionPretrainingBuilder, tiny_catalog,
                                    attributes_dir=str(tmp_path))
    with pytest.raises(DataError, match=message.replace("{id}", str(product["id"]))) as error:
        build_dataset(FashionPretrainingBuilder, config, "train")
    named = {"labels": "FashionGen_train_labels.json", "vocabulary": "attributes.json"}[bad_file]
    assert str(tmp_path / named) in str(error.value)


# ------------------------------------------------------- 7. images outside the dataset
@pytest.mark.parametrize("image", ["/etc/passwd", "../../etc/passwd", "link/passwd"])
def test_an_image_path_leaving_the_dataset_folder_is_named(tmp_path, image):
    root = tmp_path / "dataset"
    root.mkdir()
    (root / "link").symlink_to("/etc")  # resolved, not trusted by its name
    path = write_info(root, [{"id": 3, "images": ["a.png", image]}])
    with pytest.raises(DataError, match=f"product 3: image path '{image}' resolves to "
                                        ".* outside the image folder") as error:
        ProductDatabase(str(root), "train_info.json")
    assert str(path) in str(error.value)
    allowed = ProductDatabase(str(root), "train_info.json", allow_images_outside_root=True)
    assert allowed.products[0]["images"][1] == os.path.join(str(root), image)


def test_symlinks_and_dot_dots_that_stay_inside_the_dataset_folder_are_fine(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    write_info(tmp_path, [{"id": 3, "images": ["link/a.png", "real/../b.png", "./c.png"]}])
    (product,) = ProductDatabase(str(tmp_path), "train_info.json").products
    assert product["images"] == [os.path.join(str(tmp_path), p)
                                 for p in ("link/a.png", "real/../b.png", "./c.png")]


def test_the_dataset_config_switch_allows_images_outside_the_folder(catalog, tmp_path):
    folder = catalog / "datasets/FashionGen"
    info = read(folder / "val_info.json")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(outside)
    info[0]["images"][0] = str(outside)
    (folder / "val_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=f"val_info.json: product {info[0]['id']}: image path "
                                        f"'{outside}' resolves to"):
        build_dataset(FashionGenBuilder, catalog_dataset_config(FashionGenBuilder, catalog), "val")
    config = catalog_dataset_config(FashionGenBuilder, catalog, allow_images_outside_root=True)
    assert build_dataset(FashionGenBuilder, config, "val")[0].image.shape == (3, 56, 56)


def test_polyvore_item_ids_cannot_point_outside_the_dataset_folder(catalog):
    folder = catalog / "datasets/PolyvoreOutfits"
    item = "../../../outside"  # images/<item>.jpg is <catalog>/outside.jpg
    shutil.copy(next((folder / "images").iterdir()), catalog / "outside.jpg")
    metadata = read(folder / "polyvore_item_metadata.json")
    metadata[item] = {"category_id": 5, "title": "purple maxi dress"}
    (folder / "polyvore_item_metadata.json").write_text(json.dumps(metadata))
    entries = read(folder / "ocir_disjoint_train.json")
    entries[0]["blank"] = item
    (folder / "ocir_disjoint_train.json").write_text(json.dumps(entries))
    config = catalog_dataset_config(PolyvoreOCIRBuilder, catalog)
    with pytest.raises(DataError, match=f"ocir_disjoint_train.json: entry 0 names item {item}: "
                                        "image path .* outside the image folder"):
        build_dataset(PolyvoreOCIRBuilder, config, "train")


def test_fashioniq_image_symlinks_cannot_point_outside_the_dataset_folder(catalog, tmp_path):
    folder = catalog / "datasets/FashionIQ"
    candidate = read(folder / "captions/cap.dress.val.json")[0]["candidate"]
    (image,) = (folder / "images").glob(f"{candidate}.*")
    outside = tmp_path / image.name
    shutil.move(image, outside)
    image.symlink_to(outside)
    with pytest.raises(DataError, match=rf"cap\.dress\.val\.json: entry 0: image {candidate}: "
                                        "image path .* outside the image folder"):
        build_dataset(FashionIQBuilder, catalog_dataset_config(FashionIQBuilder, catalog), "val")
