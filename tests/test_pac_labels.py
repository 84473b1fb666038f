"""Where the PAC labels come from: the info files' ``attributes_id`` (the authors' classes) or
the attribute miner's files (``dataset_config.fashion_pretraining.attribute_labels``), and the
model's classifier size that follows them."""
import json
import os

import pytest
import torch
from mmf.common.registry import registry

from mmf_fashionvil.data.base import DataError
from mmf_fashionvil.data.pretraining.builder import FashionPretrainingBuilder
from mmf_fashionvil.data.pretraining.dataset import NUM_ATTRIBUTES_KEY

from helpers import build_dataset, build_model, catalog_dataset_config, tiny_config

SOURCES = ("FashionGen", "Fashion200k", "PolyvoreOutfits")


@pytest.fixture(autouse=True)
def no_registered_labels():
    """The label count a builder registers must not leak into other tests' models."""
    registry.unregister(NUM_ATTRIBUTES_KEY)
    yield
    registry.unregister(NUM_ATTRIBUTES_KEY)


def info_products(catalog, source):
    with open(os.path.join(catalog, "datasets", source, "train_info.json")) as f:
        return json.load(f)


def catalog_classes(catalog):
    with open(os.path.join(catalog, "catalog.json")) as f:
        return len(json.load(f)["attributes"])


def write_miner_output(folder, catalog):
    folder.mkdir()
    (folder / "attributes.json").write_text(json.dumps({"vocabulary": ["red", "dress"]}))
    first = info_products(catalog, "FashionGen")[0]
    (folder / "FashionGen_train_labels.json").write_text(json.dumps({str(first["id"]): [1]}))
    for source in SOURCES[1:]:
        (folder / f"{source}_train_labels.json").write_text("{}")


def test_auto_reads_the_info_files_attributes_id(tiny_catalog, capsys):
    classes = catalog_classes(tiny_catalog)
    config = catalog_dataset_config(FashionPretrainingBuilder, tiny_catalog, attributes_dir=None,
                                    info_num_attributes=classes)
    builder = FashionPretrainingBuilder()
    train = builder.load_dataset(config, "train")
    assert train.attribute_labels_from == "info"
    assert f"PAC labels from the info files' attributes_id, {classes} classes" in \
        capsys.readouterr().out
    builder.update_registry_for_model(config)  # as the trainer does before building the model
    assert registry.get(NUM_ATTRIBUTES_KEY) == ("info", classes)
    products = [p for source in SOURCES for p in info_products(tiny_catalog, source)]
    for index in (0, len(products) - 1):
        expected = torch.zeros(classes)
        expected[products[index]["attributes_id"]] = 1.0
        assert torch.equal(train[index].attribute_labels, expected)
    # The model's PAC classifier takes the dataset's class count when none is configured.
    model = build_model(tiny_config(training_tasks=["pac"]))
    assert model.pac_head.weight.shape[0] == classes


def test_auto_prefers_the_miners_labels_when_it_was_run(tiny_catalog, tmp_path, capsys):
    write_miner_output(tmp_path / "attributes", tiny_catalog)
    config = catalog_dataset_config(FashionPretrainingBuilder, tiny_catalog,
                                    attributes_dir=str(tmp_path / "attributes"))
    builder = FashionPretrainingBuilder()
    train = builder.load_dataset(config, "train")
    builder.update_registry_for_model(config)
    assert train.attribute_labels_from == "mined"
    assert "PAC labels from the attribute miner (attributes_dir), 2 classes" in \
        capsys.readouterr().out
    assert train[0].attribute_labels.tolist() == [0.0, 1.0]
    # A configured size that disagrees with the dataset's labels is named.
    with pytest.raises(ValueError, match=r"num_attributes gives 5 classes .* \(mined\) have 2"):
        build_model(tiny_config(training_tasks=["pac"], heads={"pac": {"num_attributes": 5}}))
    info = catalog_dataset_config(FashionPretrainingBuilder, tiny_catalog,
                                  attributes_dir=str(tmp_path / "attributes"),
                                  attribute_labels="info",
                                  info_num_attributes=catalog_classes(tiny_catalog))
    assert build_dataset(FashionPretrainingBuilder, info, "train").attribute_labels_from == "info"


def test_info_ids_outside_the_classes_and_bad_settings_are_named(tiny_catalog):
    too_few = catalog_dataset_config(FashionPretrainingBuilder, tiny_catalog, attributes_dir=None,
                                     info_num_attributes=3)
    with pytest.raises(DataError, match=r"train_info\.json: product .* outside \[0, 3\), the 3 "
                                        "classes of info_num_attributes"):
        build_dataset(FashionPretrainingBuilder, too_few, "train")
    unknown = catalog_dataset_config(FashionPretrainingBuilder, tiny_catalog,
                                     attribute_labels="attributes")
    with pytest.raises(DataError, match=r"attribute_labels=attributes: expected one of"):
        build_dataset(FashionPretrainingBuilder, unknown, "train")
