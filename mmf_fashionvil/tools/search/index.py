"""Building and reading a search index: a catalog's image embeddings on disk.

An index folder holds

- ``chunks/chunk_NNNNNN.safetensors``: what each embedding pass wrote, one file per
  ``chunk_size`` images, written atomically (tensor ``embeddings`` [n, D] float32; metadata
  ``fingerprint`` and ``items``, the JSON list of the chunk's items). Append-only: a re-run
  embeds only the catalog items no chunk holds (or whose file changed since), so an
  interrupted run loses at most one chunk of work;
- the merged view, rewritten (atomically, file by file, ``index.json`` last) at the end of
  every run, also an interrupted one: ``embeddings.safetensors`` ([N, D] float32, the rows
  in catalog order), ``items.json`` (per row: ``id``, ``path`` and, when known, ``caption``,
  ``category``, ``subcategory``, ``product``) and ``index.json`` (format, checkpoint,
  fingerprint, dim, count, source, chunks).

An index belongs to one model (its fingerprint) and one source (an image folder, or a split
of a FashionGen-format dataset); a run with another of either is refused.
"""
import json
import os
import sys
from collections import Counter

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = 1
INDEX_FILE, ITEMS_FILE, EMBEDDINGS_FILE = "index.json", "items.json", "embeddings.safetensors"
CHUNKS_DIR = "chunks"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_CHUNK_SIZE = 1024
# Item keys kept in items.json (the internal "stat" stays in the chunks).
ITEM_KEYS = ("id", "path", "caption", "category", "subcategory", "product")


class SearchError(ValueError):
    """Bad input to the search tool; the message says what and, where it can, what to do."""


def _stderr(message):
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ sources
def _file_stat(path):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def folder_items(folder):
    """(source description, items) of every image file under ``folder`` (recursively, in
    sorted path order). An item's id is its path relative to the folder without the
    extension (with it when two files differ only in their extension)."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise SearchError(f"--images {folder}: no such folder")
    paths = []
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        paths.extend(os.path.join(parent, name) for name in sorted(files)
                     if name.lower().endswith(IMAGE_EXTENSIONS))
    relative = [os.path.relpath(p, folder).replace(os.sep, "/") for p in paths]
    stems = [os.path.splitext(r)[0] for r in relative]
    repeated = {stem for stem, count in Counter(stems).items() if count > 1}
    items = [{"id": r if s in repeated else s, "path": p}
             for p, r, s in zip(paths, relative, stems)]
    if not items:
        raise SearchError(f"--images {folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                          "in it or below it")
    return {"images": folder}, items


def fashiongen_items(data_dir, split, config=None):
    """(source description, items) of a FashionGen-format split as a run with ``config`` read
    it (tools/catalog.py): one item per image of every product, id ``<product id>_<image
    number>``, caption = title + description, category and subcategory names from the
    catalog's ``categories.json`` when it has one (else the ids)."""
    from mmf_fashionvil.data.base import DataError
    from mmf_fashionvil.tools.catalog import category_names, fashiongen_split

    data_dir = os.path.abspath(data_dir)
    try:
        root, database = fashiongen_split(data_dir, split, config)
        names = {kind: category_names(root, kind) for kind in ("category", "subcategory")}
    except DataError as e:
        raise SearchError(str(e)) from None

    def name(kind, value):
        if value is None or value < 0:
            return None
        return names[kind].get(value, str(value))

    items = []
    for product in database.products:
        for number, path in enumerate(product["images"]):
            items.append({"id": f"{product['id']}_{number}", "path": path,
                          "caption": product["text"], "product": product["id"],
                          "category": name("category", product["category_id"]),
                          "subcategory": name("subcategory", product["subcategory_id"])})
    source = {"data_dir": data_dir, "dataset": "fashiongen", "split": split}
    return source, items


# ---------------------------------------------------------------------------- file store
def _write_json_atomic(path, data):
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(temporary, path)


def _write_tensor_atomic(path, embeddings, metadata):
    temporary = f"{path}.tmp{os.getpid()}"
    save_file({"embeddings": embeddings.contiguous()}, temporary, metadata=metadata)
    os.replace(temporary, path)


def read_json_file(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def chunk_files(out):
    folder = os.path.join(out, CHUNKS_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.startswith("chunk_") and n.endswith(".safetensors"))


def read_chunks(out, fingerprint):
    """{item id: (item, embedding row)} over every chunk, a later chunk's row winning."""
    rows = {}
    for path in chunk_files(out):
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            embeddings = f.get_tensor("embeddings")
        if metadata.get("fingerprint") != fingerprint:
            raise SearchError(f"{path} was written by a model of fingerprint "
                              f"{metadata.get('fingerprint')}, not {fingerprint}")
        items = json.loads(metadata["items"])
        if len(items) != len(embeddings):
            raise SearchError(f"{path}: {len(items)} items but {len(embeddings)} embeddings")
        for item, row in zip(items, embeddings):
            rows[item["id"]] = (item, row)
    return rows


def fingerprint_mismatch(what, index_meta, fingerprint, checkpoint):
    return SearchError(
        f"{what} was built with the checkpoint {index_meta.get('checkpoint')} (fingerprint "
        f"{index_meta.get('fingerprint')}), but --checkpoint {checkpoint} has fingerprint "
        f"{fingerprint}: search it with its own checkpoint, or index into a new --out folder")


# ------------------------------------------------------------------------------ building
def build_index(api, source, items, out, checkpoint, batch_size=32,
                chunk_size=DEFAULT_CHUNK_SIZE, log=_stderr):
    """Embeds the ``items`` (of ``folder_items`` / ``fashiongen_items``) of ``source`` with
    ``api`` (a loaded ``FashionViLInference``) into the index folder ``out``, resuming what
    an earlier run there embedded. Unreadable images are skipped with a warning naming each.
    Returns a summary dict: count, embedded (now), reused, skipped (paths), dropped (items
    of the index no longer in the source)."""
    from mmf_fashionvil.data.base import DEFAULT_MAX_IMAGE_PIXELS, DataError, load_image

    max_pixels = getattr(api, "max_image_pixels", None) or DEFAULT_MAX_IMAGE_PIXELS
    if chunk_size < 1 or batch_size < 1:
        raise SearchError("--batch-size and --chunk-size must be at least 1")
    out = os.path.abspath(out)
    fingerprint = str(api.fingerprint)
    meta_path = os.path.join(out, INDEX_FILE)
    if os.path.isfile(meta_path):
        meta = read_json_file(meta_path)
        if meta.get("fingerprint") != fingerprint:
            raise fingerprint_mismatch(f"The index {out}", meta, fingerprint, checkpoint)
        if meta.get("source") != source:
            raise SearchError(f"The index {out} is of {meta.get('source')}, not of {source}: "
                              "index that into a new --out folder")
    elif os.path.isdir(out) and os.listdir(out):
        raise SearchError(f"--out {out} is neither an index folder (no {INDEX_FILE}) nor empty")
    else:
        os.makedirs(os.path.join(out, CHUNKS_DIR), exist_ok=True)
        # Written first, so that chunks never exist without the model they belong to.
        _write_json_atomic(meta_path, {"format": FORMAT, "checkpoint": checkpoint,
                                       "fingerprint": fingerprint, "dim": None, "count": 0,
                                       "source": source, "chunks": 0})
    os.makedirs(os.path.join(out, CHUNKS_DIR), exist_ok=True)

    done = read_chunks(out, fingerprint)
    for item in items:
        item["stat"] = _file_stat(item["path"])
    todo = [item for item in items
            if item["id"] not in done or done[item["id"]][0].get("stat") != item["stat"]]
    summary = {"count": 0, "embedded": 0, "reused": len(items) - len(todo), "skipped": [],
               "dropped": 0}
    if todo:
        log(f"index: {len(items)} catalog images, {summary['reused']} already embedded, "
            f"{len(todo)} to embed")
    next_chunk = len(chunk_files(out))
    try:
        for start in range(0, len(todo), chunk_size):
            readable, images = [], []
            for item in todo[start:start + chunk_size]:
                try:
                    images.append(load_image(item["path"], max_pixels))
                    readable.append(item)
                except DataError as e:
                    log(f"warning: skipping an unreadable image: {item['path']} ({e})")
                    summary["skipped"].append(item["path"])
            if not readable:
                continue
            embeddings = api.encode_images(images, batch_size=batch_size)
            embeddings = embeddings.detach().to("cpu", torch.float32)
            if len(embeddings) != len(readable):
                raise RuntimeError(f"encode_images gave {len(embeddings)} embeddings for "
                                   f"{len(readable)} images")
            path = os.path.join(out, CHUNKS_DIR, f"chunk_{next_chunk:06d}.safetensors")
            _write_tensor_atomic(path, embeddings, {"fingerprint": fingerprint,
                                                    "items": json.dumps(readable)})
            next_chunk += 1
            for item, row in zip(readable, embeddings):
                done[item["id"]] = (item, row)
            summary["embedded"] += len(readable)
            log(f"index: embedded {min(start + chunk_size, len(todo))}/{len(todo)}")
    finally:
        summary["count"], summary["dropped"] = _write_merged_view(
            out, items, done, fingerprint, checkpoint, source)
    return summary


def _write_merged_view(out, items, done, fingerprint, checkpoint, source):
    """Writes the merged view of the catalog's embedded items (catalog order); returns
    (its count, the number of embedded items no longer in the catalog)."""
    in_catalog = {item["id"] for item in items}
    rows = [(item, done[item["id"]][1]) for item in items if item["id"] in done
            and done[item["id"]][0].get("stat") == item["stat"]]
    # Metadata (caption, category) comes from the catalog now, the embedding from the chunk.
    merged_items = [{k: item[k] for k in ITEM_KEYS if item.get(k) is not None}
                    for item, _ in rows]
    dims = {len(row) for _, row in rows}
    if len(dims) > 1:
        raise SearchError(f"{out}: chunks of different embedding sizes {sorted(dims)}")
    dim = dims.pop() if dims else None
    embeddings = (torch.stack([row for _, row in rows]) if rows
                  else torch.zeros(0, dim or 0, dtype=torch.float32))
    _write_tensor_atomic(os.path.join(out, EMBEDDINGS_FILE), embeddings,
                         {"fingerprint": fingerprint})
    _write_json_atomic(os.path.join(out, ITEMS_FILE), merged_items)
    _write_json_atomic(os.path.join(out, INDEX_FILE), {
        "format": FORMAT, "checkpoint": checkpoint, "fingerprint": fingerprint, "dim": dim,
        "count": len(rows), "source": source, "chunks": len(chunk_files(out))})
    return len(rows), len(set(done) - in_catalog)


# ------------------------------------------------------------------------------- reading
class SearchIndex:
    """A finished index folder in memory: ``meta`` (index.json), ``items`` (items.json),
    ``embeddings`` (float32 [N, D])."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        if not os.path.isdir(self.path):
            raise SearchError(f"--index {self.path}: no such folder (build one with "
                              "`python -m mmf_fashionvil.tools.search index ... --out DIR`)")
        for name in (INDEX_FILE, ITEMS_FILE, EMBEDDINGS_FILE):
            if not os.path.isfile(os.path.join(self.path, name)):
                raise SearchError(
                    f"--index {self.path}: {name} is missing: not an index folder, or its "
                    "`index` run never finished (re-run it: it resumes)")
        self.meta = read_json_file(os.path.join(self.path, INDEX_FILE))
        self.items = read_json_file(os.path.join(self.path, ITEMS_FILE))
        with safe_open(os.path.join(self.path, EMBEDDINGS_FILE), framework="pt") as f:
            self.embeddings = f.get_tensor("embeddings").to(torch.float32)
        if not (len(self.items) == len(self.embeddings) == self.meta.get("count")):
            raise SearchError(
                f"--index {self.path}: index.json counts {self.meta.get('count')} items, "
                f"items.json has {len(self.items)}, embeddings.safetensors "
                f"{len(self.embeddings)} rows: re-run `index` to rewrite them")
        if not self.items:
            raise SearchError(f"--index {self.path} holds no items")
        self.row_of = {item["id"]: row for row, item in enumerate(self.items)}
        self._faiss = None

    def __len__(self):
        return len(self.items)

    def check_model(self, api, checkpoint):
        if str(api.fingerprint) != self.meta.get("fingerprint"):
            raise fingerprint_mismatch(f"The index {self.path}", self.meta,
                                       api.fingerprint, checkpoint)

    def faiss_index(self):
        """A faiss IndexFlatIP over the embeddings (built once)."""
        if self._faiss is None:
            try:
                import faiss
            except ImportError:
                raise SearchError("--backend faiss needs the faiss-cpu package "
                                  "(pip install faiss-cpu); --backend exact needs nothing")
            index = faiss.IndexFlatIP(self.embeddings.shape[1])
            index.add(self.embeddings.contiguous().numpy())
            self._faiss = index
        return self._faiss
