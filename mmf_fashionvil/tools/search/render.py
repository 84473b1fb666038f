"""Pictures of a search: a PNG grid (matplotlib) and a static, self-contained HTML page."""
import base64
import html
import io
import textwrap

from PIL import Image

THUMBNAIL = 192  # px, the longer side
GRID_COLUMNS = 5


def thumbnail(path, size=THUMBNAIL):
    """The image at ``path`` shrunk to ``size`` px (a grey square when unreadable)."""
    from mmf_fashionvil.data.base import DataError, load_image

    try:
        image = load_image(path)
    except DataError:
        return Image.new("RGB", (size, size), (200, 200, 200))
    image.thumbnail((size, size))
    return image


def thumbnail_bytes(path, size=THUMBNAIL):
    buffer = io.BytesIO()
    thumbnail(path, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _wrap(text, width, lines):
    wrapped = textwrap.wrap(text or "", width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][:width - 3] + "..."
    return "\n".join(wrapped)


def write_grid(answer, path):
    """A PNG: the query on the left (its text, or the reference image above the modification
    text), then the results in rows of GRID_COLUMNS, each with rank, id, score and caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, query = answer["results"], answer["query"]
    columns = min(GRID_COLUMNS, len(results))
    rows = (len(results) + columns - 1) // columns
    figure = plt.figure(figsize=(2.4 * (columns + 1.3), 3.3 * rows), dpi=100)
    grid = figure.add_gridspec(rows, columns + 1, width_ratios=[1.3] + [1] * columns,
                               wspace=0.15, hspace=0.45)
    panel = figure.add_subplot(grid[:, 0])
    panel.axis("off")
    if "reference" in query:
        panel.imshow(thumbnail(query["reference"]))
        panel.set_title("reference", fontsize=9)
        panel.text(0.5, -0.05, _wrap(f"changed as: \"{query['text']}\"", 26, 8),
                   transform=panel.transAxes, ha="center", va="top", fontsize=9)
    else:
        panel.text(0.5, 0.5, _wrap(f"query:\n\"{query['text']}\"", 24, 14),
                   transform=panel.transAxes, ha="center", va="center", fontsize=11,
                   bbox={"boxstyle": "round", "facecolor": "#eef2ff", "edgecolor": "#99a"})
    for number, result in enumerate(results):
        axes = figure.add_subplot(grid[number // columns, 1 + number % columns])
        axes.imshow(thumbnail(result["path"]))
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(f"#{result['rank']} {result['id']}\nscore {result['score']:.3f}",
                       fontsize=8)
        axes.set_xlabel(_wrap(result.get("caption") or result.get("category") or "", 30, 3),
                        fontsize=7)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


def _data_uri(path):
    return "data:image/png;base64," + base64.b64encode(thumbnail_bytes(path)).decode("ascii")


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
.query { display: flex; gap: 1em; align-items: center; margin-bottom: 1em; }
.query img { max-width: 160px; border: 1px solid #ccc; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 12px; }
.result { border: 1px solid #ddd; border-radius: 6px; padding: 8px; font-size: 13px; }
.result img { width: 100%; height: 170px; object-fit: contain; background: #f4f4f4; }
.id { font-weight: bold; } .score { color: #555; } .caption { color: #333; margin-top: 4px; }
.note { color: #a60; }
"""


def result_cards(results, image_src):
    """The HTML of the result cards (``image_src(result)`` -> the img src)."""
    cards = []
    for result in results:
        category = f" · {html.escape(str(result['category']))}" if result.get("category") else ""
        cards.append(
            f'<div class="result" data-id="{html.escape(str(result["id"]))}">'
            f'<img src="{html.escape(image_src(result))}" alt="{html.escape(str(result["id"]))}">'
            f'<div><span class="rank">#{result["rank"]}</span> '
            f'<span class="id">{html.escape(str(result["id"]))}</span>{category}</div>'
            f'<div class="score">score {result["score"]:.4f}</div>'
            f'<div class="caption">{html.escape(result.get("caption") or "")}</div></div>')
    return "\n".join(cards)


def write_html(answer, path):
    """A static page of the query and its results, thumbnails embedded (no other files)."""
    query = answer["query"]
    if "reference" in query:
        head = (f'<img src="{_data_uri(query["reference"])}" alt="reference">'
                f'<div>this image, changed as: <b>{html.escape(query["text"])}</b></div>')
    else:
        head = f'<div>query: <b>{html.escape(query["text"])}</b></div>'
    note = f'<p class="note">{html.escape(answer["note"])}</p>' if answer.get("note") else ""
    page = (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>FashionViL search: "
            f"{html.escape(query['text'])}</title><style>{STYLE}</style></head><body>\n"
            f'<div class="query">{head}</div>{note}\n<div class="grid" id="results">\n'
            f'{result_cards(answer["results"], lambda r: _data_uri(r["path"]))}\n'
            "</div></body></html>\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
