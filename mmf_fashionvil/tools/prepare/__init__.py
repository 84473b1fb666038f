"""The official dataset releases -> the layout the datasets read (SPEC §4.1), optionally with
LMDB image stores:

    python -m mmf_fashionvil.prepare fashiongen  --raw DIR --out DATA_DIR [--store lmdb ...]
    python -m mmf_fashionvil.prepare fashion200k --raw DIR --out DATA_DIR
    python -m mmf_fashionvil.prepare polyvore    --raw DIR --out DATA_DIR [--seed N]
    python -m mmf_fashionvil.prepare fashioniq   --raw DIR --out DATA_DIR [--skip-missing]
    python -m mmf_fashionvil.prepare pack --out DATA_DIR [--encoding raw --resize 256]

Each release sub-command writes ``DATA_DIR/datasets/<Name>/`` (info files whose image paths
are relative to the split's image folder, the image folders or, with ``--store lmdb``, one
store ``<folder>.lmdb`` per image folder, and ``prepared.json``: the command, the raw files'
sizes and times, the options and the counts). It checks that every image it references
exists and decodes, prints per-split counts (products, images, captions, skipped with
reasons), writes into ``DATA_DIR/datasets/.<Name>.partial`` and renames that into place at
the end (an interrupted run leaves no folder that looks complete; the next run removes the
partial one). A rerun with the same inputs and options finds the dataset up to date; a folder
holding another dataset is refused unless ``--overwrite``.

Modules: one per release (``fashiongen``, ``fashion200k``, ``polyvore``, ``fashioniq``),
``pack`` (stores for an existing layout), ``output`` (staging, manifest, image sink, counts),
``cli``.
"""
