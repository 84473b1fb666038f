"""Querying an index: the query embedding (a text, or a reference image changed as a text
says), the top-K search (exact or faiss) and the result records."""
import os

import torch

from mmf_fashionvil.tools.search.index import SearchError

BACKENDS = ("exact", "faiss")


def clean_text(text, what="the query text"):
    text = (text or "").strip()
    if not text:
        raise SearchError(f"{what} is empty: give some words (--text \"red dress\")")
    return text


def resolve_reference(index, reference):
    """(path, row in the index or None) of a reference image given as a file path or as an
    item id of the index."""
    reference = str(reference or "").strip()
    if not reference:
        raise SearchError("the reference image is empty: give a file or an item id")
    if reference in index.row_of and not os.path.isfile(reference):
        row = index.row_of[reference]
        return index.items[row]["path"], row
    if not os.path.isfile(reference):
        raise SearchError(f"--image {reference}: neither an image file nor an item id of the "
                          f"index {index.path}")
    real = os.path.realpath(reference)
    for row, item in enumerate(index.items):
        if os.path.realpath(item["path"]) == real:
            return reference, row
    return reference, None


def query_embedding(api, text, reference_path=None):
    """The [D] query: ``encode_texts([text])``, or with a reference image
    ``compose([image], [text])`` (the TGIR query "this image, changed as the text says")."""
    if reference_path is None:
        embedding = api.encode_texts([clean_text(text)])
    else:
        from mmf_fashionvil.data.base import DEFAULT_MAX_IMAGE_PIXELS, DataError, load_image

        text = clean_text(text, "the modification text")
        max_pixels = getattr(api, "max_image_pixels", None) or DEFAULT_MAX_IMAGE_PIXELS
        try:
            image = load_image(reference_path, max_pixels)
        except DataError as e:
            raise SearchError(f"the reference image cannot be used: {e}") from None
        embedding = api.compose([image], [text])
    return embedding.detach().to("cpu", torch.float32)[0]


def clamp_top_k(top_k, available):
    """(K to use, a note or None): K larger than what can be returned is clamped to it."""
    top_k = int(top_k)
    if top_k < 1:
        raise SearchError(f"--top-k must be at least 1, got {top_k}")
    if top_k > available:
        return available, (f"note: --top-k {top_k} is more than the {available} items that can "
                           f"be returned: showing all {available}")
    return top_k, None


def top_k_rows(index, query, top_k, backend="exact", exclude=()):
    """(rows, scores) of the ``top_k`` items scoring highest against ``query`` [D] by dot
    product, best first, ties broken by the lower row (``exclude``: rows left out).

    ``exact``: the matrix product and a stable sort. ``faiss``: an IndexFlatIP over the same
    embeddings (the same results up to float rounding; ties at the K-th place may differ)."""
    exclude = sorted(set(exclude))
    if backend not in BACKENDS:
        raise SearchError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if query.shape != index.embeddings.shape[1:]:
        raise SearchError(f"the query embedding has shape {tuple(query.shape)}, the index's "
                          f"embeddings {tuple(index.embeddings.shape[1:])}")
    if backend == "exact":
        # [1, D] @ [D, N], as the retrieval metrics score queries (the same float rounding).
        scores = (query[None] @ index.embeddings.t())[0]
        order = torch.sort(scores, descending=True, stable=True).indices
        if exclude:
            order = order[~torch.isin(order, torch.tensor(exclude))]
        rows = order[:top_k]
        return rows.tolist(), scores[rows].tolist()
    wanted = min(len(index), top_k + len(exclude))
    scores, rows = index.faiss_index().search(query[None].contiguous().numpy(), wanted)
    pairs = [(float(s), int(r)) for s, r in zip(scores[0], rows[0])
             if r >= 0 and int(r) not in exclude]
    pairs.sort(key=lambda pair: (-pair[0], pair[1]))
    pairs = pairs[:top_k]
    return [r for _, r in pairs], [s for s, _ in pairs]


def run_query(api, index, text, reference=None, top_k=10, backend="exact",
              include_reference=False):
    """One search: {"query": {text, reference?, reference_id?}, "results": [{rank, row, id,
    score, path, caption?, category?, ...}], "note": str or None}. A reference image that is
    a catalog item is left out of its own results unless ``include_reference``."""
    text = clean_text(text, "the query text" if reference is None else "the modification text")
    described = {"text": text}
    exclude = ()
    reference_path = None
    if reference is not None:
        reference_path, reference_row = resolve_reference(index, reference)
        described["reference"] = reference_path
        if reference_row is not None:
            described["reference_id"] = index.items[reference_row]["id"]
            if not include_reference:
                exclude = (reference_row,)
    top_k, note = clamp_top_k(top_k, len(index) - len(exclude))
    if top_k == 0:
        raise SearchError("the index holds nothing but the reference image")
    query = query_embedding(api, text, reference_path)
    rows, scores = top_k_rows(index, query, top_k, backend, exclude)
    results = [dict(index.items[row], rank=rank, row=row, score=score)
               for rank, (row, score) in enumerate(zip(rows, scores), 1)]
    return {"query": described, "results": results, "note": note}


def format_results(answer):
    """The text the ``query`` command prints."""
    query = answer["query"]
    if "reference" in query:
        lines = [f"query: image {query['reference']} + \"{query['text']}\""]
    else:
        lines = [f"query: \"{query['text']}\""]
    width = max(len(str(r["id"])) for r in answer["results"])
    for result in answer["results"]:
        caption = result.get("caption") or ""
        if len(caption) > 90:
            caption = caption[:87] + "..."
        lines.append(f"{result['rank']:4d}  {str(result['id']):<{width}}  "
                     f"{result['score']:9.4f}  {caption}".rstrip())
    return "\n".join(lines)
