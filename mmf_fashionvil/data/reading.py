"""Reading dataset files: JSON annotation files, and images from files or from an LMDB image
store, with the same RGB conversion and the same named errors. No MMF import: the preparation
tools use it too.

An LMDB image store holds the images of one image folder (e.g. ``FashionGen/train``) in
``<folder>.lmdb`` (``FashionGen/train.lmdb/data.mdb``), keyed by the image's path relative to
the folder (``posixpath.normpath``, '/' separators, UTF-8). The values are what its meta
record says (key :data:`META_KEY`, JSON ``{"format", "encoding", "resize", "count"}``):
encoded image bytes (``jpeg``, ``png`` or ``keep``: the file's own bytes) or ``raw`` pixels
(``<height:u32><width:u32>`` little-endian, then height x width x 3 uint8 RGB). ``resize``
(null or N) says the images were resized first, shorter side to N, exactly as the image
transforms' ``Resize(N)`` does (which is then a no-op on them).
"""
import io
import json
import os
import posixpath
import shutil
import struct
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


class DataError(ValueError):
    """Malformed or missing dataset input; the message names the file and entry."""


# PIL's default Image.MAX_IMAGE_PIXELS: the default of the dataset config key max_image_pixels.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# Modes whose 8-bit conversion PIL does right (palette and CMYK included); the others
# (alpha, transparency keys, 16/32-bit grey) are converted by to_rgb itself.
PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr")
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")

IMAGE_STORES = ("files", "lmdb")
# Image files the folder listings pick up (FashionIQ's asin lookup, packing a folder).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
STORE_SUFFIX = ".lmdb"
STORE_FORMAT = 1
ENCODINGS = ("jpeg", "png", "keep", "raw")
# No image path holds a NUL byte: the meta record cannot collide with an image key.
META_KEY = b"\x00fashionvil_image_store"
RAW_HEADER = struct.Struct("<II")


def read_json(path):
    """The content of a UTF-8 JSON annotation file; a missing, non-UTF-8 or invalid one is
    an error naming the file (and the first bad byte)."""
    if not os.path.isfile(path):
        raise DataError(f"Annotation file '{path}' does not exist")
    with open(path, "rb") as f:
        data = f.read()
    try:
        # Decoded here rather than by open(): the error's offset is then the file's byte offset.
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"Annotation file '{path}' is not UTF-8: byte 0x{data[e.start]:02x} at byte offset "
            f"{e.start} (line {line}) cannot be decoded; annotation files must be UTF-8 "
            "(re-encode it, e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"Annotation file '{path}' is not valid JSON: {e}") from None


def to_rgb(image):
    """The 8-bit RGB image of ``image``: transparency composited onto white (product shots
    are often cut-out RGBA PNGs, and PIL's plain conversion turns their background black),
    16-bit grey scaled to 8 bits by ``value >> 8``."""
    if image.mode in WIDE_GREY_MODES:
        # PIL clips 16-bit values to 255 (a white image). The high byte (>> 8) is what 8-bit
        # viewers show and agrees with round(value / 257) within 1. Mode I is 32-bit: it holds
        # 16-bit data (PNG, TIFF), so it is clipped to that range first.
        grey = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")  # a transparency key (P, L, RGB) becomes alpha
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode in PLAIN_MODES:
        return image.convert("RGB")
    raise ValueError(f"image mode {image.mode} has no defined RGB conversion")


def decode_image(source, name, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """The RGB image of ``source`` (a path or a binary file object; see :func:`to_rgb`);
    one of more than ``max_pixels`` pixels, a missing or an unreadable one is an error
    naming ``name`` ("Image file '<path>'", "Image '<key>' of store '<path>'")."""
    too_large = (f"{name} has more pixels than the limit max_image_pixels={max_pixels} of "
                 "the dataset config (a decompression bomb?)")
    try:
        with warnings.catch_warnings():
            # PIL warns on opening an image past its own global limit; ours decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                rgb = to_rgb(image) if width * height <= max_pixels else None
    except Image.DecompressionBombError as e:
        # PIL refuses (while opening) images past twice its global Image.MAX_IMAGE_PIXELS:
        # that also bounds a larger max_image_pixels.
        raise DataError(f"{too_large}, or than PIL's own limit: {e}") from None
    except FileNotFoundError:
        raise DataError(f"{name} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{name} cannot be read (corrupt?): {e}") from None
    if rgb is None:
        raise DataError(f"{too_large}: it is {width}x{height}")
    return rgb


def load_image(path, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """The RGB image at ``path`` (see :func:`decode_image`)."""
    return decode_image(path, f"Image file '{path}'", max_pixels)


# ---------------------------------------------------------------------- LMDB image stores
def store_path(folder):
    """The LMDB store of an image folder: ``<folder>.lmdb``."""
    return os.path.normpath(folder) + STORE_SUFFIX


def store_key(relative):
    """The key of an image path relative to its folder ('./a//b.png' and 'a/b.png' agree)."""
    return posixpath.normpath(relative.replace(os.sep, "/"))


def resized(image, size):
    """``image`` (PIL) with its shorter side ``size``, as the transforms' ``Resize(size)``
    computes it (torchvision v2, antialiased bilinear on the uint8 tensor)."""
    import torch
    from torchvision.transforms.v2 import functional as F

    tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    out = F.resize(tensor, [int(size)], antialias=True)
    return Image.fromarray(out.permute(1, 2, 0).contiguous().numpy(), "RGB")


def encode_image(source, encoding, resize=None, name=None):
    """The stored value of an image: ``source`` is a file path or an RGB image (PIL or an
    H x W x 3 uint8 array); ``keep`` stores a file's own bytes (an array: PNG)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"image encoding must be one of {ENCODINGS}, got {encoding!r}")
    if isinstance(source, str):
        if encoding == "keep" and not resize:
            with open(source, "rb") as f:
                data = f.read()
            decode_image(io.BytesIO(data), name or f"Image file '{source}'")  # decodes?
            return data
        image = load_image(source)
    else:
        image = source if isinstance(source, Image.Image) else Image.fromarray(
            np.ascontiguousarray(source, dtype=np.uint8), "RGB")
        image = image.convert("RGB")
    if resize:
        image = resized(image, resize)
    if encoding == "raw":
        return RAW_HEADER.pack(image.height, image.width) + image.tobytes()
    buffer = io.BytesIO()
    if encoding == "jpeg":
        image.save(buffer, format="JPEG", quality=95, subsampling=0)
    else:  # png, or keep for pixels
        image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


# path -> (process id, environment, read transaction): LMDB allows one environment per file
# and process, shared by every store object of that path.
_ENVIRONMENTS = {}


def _read_transaction(path):
    """The read transaction of the store at ``path`` in this process, opened on first use
    (read-only, no lock file); a forked process closes the copy it inherited and reopens."""
    pid, env, txn = _ENVIRONMENTS.get(path, (None, None, None))
    if pid == os.getpid():
        return txn
    if env is not None:  # inherited through fork: LMDB handles must not cross processes
        env.close()
    import lmdb

    env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False,
                    max_readers=2048)
    txn = env.begin(buffers=False)
    _ENVIRONMENTS[path] = (os.getpid(), env, txn)
    return txn


class LMDBImageStore:
    """Read access to one store. The LMDB environment is opened on first read in each
    process, so a store may be pickled into DataLoader workers and DDP processes."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        if not os.path.isfile(os.path.join(path, "data.mdb")):
            raise DataError(
                f"Image store '{path}' does not exist (dataset config image_store: lmdb): "
                "write it with `python -m mmf_fashionvil.prepare pack --out <data_dir>`, "
                "or set image_store: files")
        meta = self._transaction().get(META_KEY)
        try:
            self.meta = json.loads(bytes(meta).decode("utf-8"))
            self.encoding = self.meta["encoding"]
        except (TypeError, ValueError, KeyError):
            raise DataError(f"Image store '{path}' has no valid meta record: not written by "
                            "`python -m mmf_fashionvil.prepare` (or interrupted)") from None
        if self.meta.get("format") != STORE_FORMAT or self.encoding not in ENCODINGS:
            raise DataError(f"Image store '{path}': unknown format {self.meta.get('format')} / "
                            f"encoding {self.encoding!r}")

    def _transaction(self):
        return _read_transaction(self.path)

    def __contains__(self, key):
        return self._transaction().get(store_key(key).encode("utf-8")) is not None

    def keys(self):
        """Every image key, as strings."""
        with self._transaction().cursor() as cursor:
            return [k.decode("utf-8") for k in cursor.iternext(keys=True, values=False)
                    if k != META_KEY]

    def read(self, relative, max_pixels=DEFAULT_MAX_IMAGE_PIXELS, where=None):
        """The RGB image of ``relative`` (a path relative to the store's folder)."""
        key = store_key(relative)
        value = self._transaction().get(key.encode("utf-8"))
        name = f"Image '{key}' of store '{self.path}'"
        if value is None:
            raise DataError(f"{name} does not exist (a key the store lacks"
                            f"{'; ' + where if where else ''})")
        if self.encoding != "raw":
            return decode_image(io.BytesIO(value), name, max_pixels)
        height, width = RAW_HEADER.unpack_from(value)
        if height * width > max_pixels:
            raise DataError(f"{name} has more pixels than the limit max_image_pixels="
                            f"{max_pixels} of the dataset config: it is {width}x{height}")
        if len(value) != RAW_HEADER.size + height * width * 3:
            raise DataError(f"{name} cannot be read (corrupt?): {len(value)} bytes for "
                            f"{width}x{height} raw pixels")
        return Image.frombuffer("RGB", (width, height), value[RAW_HEADER.size:], "raw", "RGB",
                                0, 1)


class LMDBImageWriter:
    """Writes a store into ``<path>.partial`` and renames it to ``path`` on :meth:`close`
    (a store that exists is complete). Grows the map as needed; commits in batches."""

    BATCH = 512

    def __init__(self, path, encoding="keep", resize=None):
        import lmdb

        if encoding not in ENCODINGS:
            raise ValueError(f"--encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.path, self.encoding, self.resize = path, encoding, resize
        self.partial = path + ".partial"
        remove_tree(self.partial)
        os.makedirs(self.partial)
        self._env = lmdb.open(self.partial, map_size=1 << 30, subdir=True, lock=True,
                              readahead=False, meminit=False)
        self._pending, self.count, self.keys = [], 0, set()

    def add(self, relative, source, name=None):
        """Stores the image ``source`` (file path, PIL image or uint8 array) under the key of
        ``relative``; returns the key."""
        key = store_key(relative)
        if key in self.keys:
            raise DataError(f"Image key '{key}' is written twice into '{self.path}'")
        self.keys.add(key)
        self._pending.append((key.encode("utf-8"),
                              encode_image(source, self.encoding, self.resize, name)))
        if len(self._pending) >= self.BATCH:
            self._commit()
        return key

    def _commit(self):
        import lmdb

        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
        self.count += len(self._pending)
        self._pending = []

    def close(self):
        self._commit()
        meta = {"format": STORE_FORMAT, "encoding": self.encoding, "resize": self.resize,
                "count": self.count}
        with self._env.begin(write=True) as txn:
            txn.put(META_KEY, json.dumps(meta, sort_keys=True).encode("utf-8"))
        self._env.sync(True)
        self._env.close()
        lock = os.path.join(self.partial, "lock.mdb")
        if os.path.exists(lock):
            os.unlink(lock)
        cached = _ENVIRONMENTS.pop(os.path.abspath(self.path), None)
        if cached is not None and cached[0] == os.getpid():
            cached[1].close()  # a reader of the store being replaced would see the old one
        remove_tree(self.path)
        os.rename(self.partial, self.path)
        return meta

    def abort(self):
        self._env.close()
        remove_tree(self.partial)


def remove_tree(path):
    """Removes a folder tree or a file, if there is one."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
