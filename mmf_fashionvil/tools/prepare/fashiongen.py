"""FashionGen: the official HDF5 files -> ``FashionGen/{train,val}_info.json``, the image folders
(``train/``, ``val/``, or their stores) and ``categories.json``.

``fashiongen_256_256_train.h5`` / ``fashiongen_256_256_validation.h5`` hold one row per image:
``input_image`` (N x 256 x 256 x 3 uint8) and N x 1 columns ``input_name``,
``input_description``, ``input_category``, ``input_subcategory``, ``input_productID``,
``input_pose`` (byte strings, UTF-8 or latin-1; the productID may be an integer). Rows of one
productID are the views of one product, which must agree on name, description, category and
subcategory. Images are named ``<productID>_<view>.png`` (view: the row's rank among its
product's rows). Category and subcategory names get ids from the train file (sorted names;
names only the validation file has get the next ids, and are counted), written to
``categories.json`` (``{"category": [names by id], "subcategory": [...]}``). The file is read
in chunks of rows: the 30 GB train file is never loaded whole.
"""
import os
from collections import OrderedDict

from mmf_fashionvil.tools.prepare.output import ImageSink, PrepareError, Summary, image_folders

FILES = {"train": "fashiongen_256_256_train.h5", "val": "fashiongen_256_256_validation.h5"}
TEXT_COLUMNS = ("input_name", "input_description", "input_category", "input_subcategory",
                "input_pose")
COLUMNS = ("input_image", "input_productID") + TEXT_COLUMNS
# Fields the rows of one product must agree on (info key, column).
PRODUCT_FIELDS = (("title", "input_name"), ("description", "input_description"),
                  ("category", "input_category"), ("subcategory", "input_subcategory"))
CHUNK = 1024


def text(value):
    """A cell as a string: bytes decoded as UTF-8, else latin-1 (the release mixes them)."""
    if hasattr(value, "shape") and value.shape:  # an N x 1 column's row
        value = value[0]
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")
    return str(value).strip()


def open_file(path):
    import h5py

    if not os.path.isfile(path):
        raise PrepareError(f"FashionGen file '{path}' does not exist")
    try:
        handle = h5py.File(path, "r")
    except OSError as e:
        raise PrepareError(f"'{path}' is not a readable HDF5 file: {e}") from None
    missing = [c for c in COLUMNS if c not in handle]
    if missing:
        raise PrepareError(f"{path}: missing dataset(s) {missing} (a FashionGen file has "
                           f"{list(COLUMNS)})")
    lengths = {c: len(handle[c]) for c in COLUMNS}
    if len(set(lengths.values())) != 1:
        raise PrepareError(f"{path}: datasets of different lengths {lengths}")
    return handle


def read_products(handle, path):
    """OrderedDict productID -> {"rows": [...], title, description, category, subcategory}
    in order of first row; rows that disagree on a product field are an error."""
    products = OrderedDict()
    total = len(handle["input_productID"])
    for start in range(0, total, CHUNK):
        columns = {c: handle[c][start:start + CHUNK] for c in ("input_productID",) + TEXT_COLUMNS}
        for offset in range(len(columns["input_productID"])):
            row = start + offset
            product_id = text(columns["input_productID"][offset])
            if not product_id:
                raise PrepareError(f"{path}: row {row} has an empty input_productID")
            fields = {key: text(columns[column][offset]) for key, column in PRODUCT_FIELDS}
            product = products.get(product_id)
            if product is None:
                products[product_id] = dict(fields, rows=[row],
                                            poses=[text(columns["input_pose"][offset])])
                continue
            for key, column in PRODUCT_FIELDS:
                if fields[key] != product[key]:
                    raise PrepareError(
                        f"{path}: productID {product_id}: row {row} has {column} "
                        f"{fields[key][:80]!r}, row {product['rows'][0]} has "
                        f"{product[key][:80]!r} (the rows of one product must agree)")
            product["rows"].append(row)
            product["poses"].append(text(columns["input_pose"][offset]))
    return products


def product_id_value(product_id):
    return int(product_id) if product_id.isdecimal() else product_id


def prepare(staged, raw_dir, store, encoding, resize, link):
    """Writes the staged FashionGen folder; returns the summary."""
    folders = image_folders("FashionGen")  # {train: train, val: val, test: val}
    summary = Summary()
    handles = {split: open_file(os.path.join(raw_dir, name)) for split, name in FILES.items()}
    try:
        products = {split: read_products(h, h.filename) for split, h in handles.items()}
        names = {}
        for kind in ("category", "subcategory"):
            train_names = sorted({p[kind] for p in products["train"].values()})
            extra = sorted({p[kind] for p in products["val"].values()} - set(train_names))
            names[kind] = train_names + extra
            if extra:
                summary.note("val", f"{kind} names the train file lacks (ids after its "
                             f"{len(train_names)})", len(extra))
        ids = {kind: {name: i for i, name in enumerate(values)} for kind, values in names.items()}
        staged.write_json("categories.json", names, indent=1)
        for split, handle in handles.items():
            sink = ImageSink(staged, folders[split], store, encoding, resize, link)
            entries, counts = [], summary.split(split)
            file_of_row = {}
            try:
                for product_id, product in products[split].items():
                    if not (product["title"] or product["description"]):
                        summary.skip(split, "empty name and description")
                        continue
                    images = []
                    for view, row in enumerate(product["rows"]):
                        images.append(f"{product_id}_{view}.png")
                        file_of_row[row] = images[-1]
                    entries.append({
                        "id": product_id_value(product_id), "images": images,
                        "title": product["title"], "description": product["description"],
                        "category_id": ids["category"][product["category"]],
                        "subcategory_id": ids["subcategory"][product["subcategory"]],
                        "category": product["category"], "subcategory": product["subcategory"],
                        "poses": product["poses"]})
                    counts["products"] += 1
                    counts["captions"] += 1
                total = len(handle["input_image"])
                for start in range(0, total, CHUNK):
                    block = handle["input_image"][start:start + CHUNK]
                    for offset, pixels in enumerate(block):
                        name = file_of_row.get(start + offset)
                        if name is not None:
                            sink.add_pixels(name, pixels, f"{handle.filename}: row {start + offset}")
                sink.close()
            except BaseException:
                sink.abort()
                raise
            counts["images"] = sink.count
            annotation = "train_info.json" if split == "train" else "val_info.json"
            staged.write_json(annotation, entries)
    finally:
        for handle in handles.values():
            handle.close()
    return summary, [os.path.join(raw_dir, name) for name in FILES.values()]
