"""The retrieval grids and the t-SNE figure (matplotlib Figures, no pyplot state)."""
import random
import textwrap

import numpy as np

CORRECT = "#1a9641"  # frame and title of a correct candidate
WRONG = "#bbbbbb"
QUERY = "#2c7bb6"


def _wrapped(text, width, max_lines):
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:width - 1] + "…"
    return "\n".join(lines)


def _frame(axes, colour, width):
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def _show_image(axes, path):
    from PIL import Image

    with Image.open(path) as image:
        axes.imshow(np.asarray(image.convert("RGB")), interpolation="nearest")


def _show_text(axes, text, width=26, max_lines=9, fontsize=6.5):
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.text(0.05, 0.95, _wrapped(text, width, max_lines), va="top", ha="left",
              fontsize=fontsize, family="sans-serif", transform=axes.transAxes)


def _candidate_title(axes, position, candidate):
    mark = "  ✓" if candidate["correct"] else ""
    axes.set_title(f"#{position + 1}  {candidate['score']:.3f}{mark}", fontsize=8,
                   color=CORRECT if candidate["correct"] else "black")


def _rank_line(rank, kind):
    return f"first correct {kind} at #{rank + 1}"


def grid_figure(report, direction):
    """The grid of ``report`` (ranking.retrieval_report) for ``direction``
    ("text_to_image" or "image_to_text"): one row per query, the query then its top-k
    candidates with their scores, correct ones framed green."""
    from matplotlib.figure import Figure

    rows, k = report[direction], report["top_k"]
    text_query = direction == "text_to_image"
    widths = [1.6] + [1.0 if text_query else 1.45] * k
    figure = Figure(figsize=(1.45 * sum(widths), 1.75 * len(rows) + 0.5), layout="constrained")
    grid = figure.add_gridspec(len(rows), 1 + k, width_ratios=widths)
    for r, row in enumerate(rows):
        query_axes = figure.add_subplot(grid[r, 0])
        heading = f"query: product {row['product_id']}\n{row['category']}, " \
                  f"{_rank_line(row['rank'], 'image' if text_query else 'text')}"
        if text_query:
            _show_text(query_axes, row["caption"], width=30, max_lines=8, fontsize=7)
        else:
            _show_image(query_axes, row["image"])
        _frame(query_axes, QUERY, 2.5)
        query_axes.set_title(heading, fontsize=7.5, color=QUERY)
        for c, candidate in enumerate(row["top"]):
            axes = figure.add_subplot(grid[r, 1 + c])
            if text_query:
                _show_image(axes, candidate["image"])
            else:
                _show_text(axes, candidate["caption"])
            _frame(axes, CORRECT if candidate["correct"] else WRONG,
                   4 if candidate["correct"] else 1)
            _candidate_title(axes, c, candidate)
    name = "text → image" if text_query else "image → text"
    direction_key = "tir" if text_query else "itr"
    recall = {n: report["recall"][f"{direction_key}_r@{n}"] for n in (1, 5, 10)}
    figure.suptitle(
        f"{name} retrieval, FashionGen {report['split']} ({report['num_images']} images, "
        f"{report['num_texts']} texts): R@1 {recall[1]:.1f}, R@5 {recall[5]:.1f}, "
        f"R@10 {recall[10]:.1f}\neach query's top {k} by embedding dot product "
        "(ties count against the query); the correct product framed green", fontsize=9)
    return figure


def tsne_points(split, max_products, seed):
    """The products (positions) the t-SNE shows: all, or ``max_products`` of them drawn with
    ``seed``; and the image items of those products."""
    products = list(range(len(split.products)))
    if max_products and len(products) > max_products:
        products = sorted(random.Random(seed).sample(products, max_products))
    chosen = set(products)
    items = [i for i, p in enumerate(split.item_product) if p in chosen]
    return products, items


def tsne_embedding(vectors, seed):
    """2-D t-SNE (sklearn, PCA start, seeded) of L2-normalised ``vectors`` [N, D]."""
    from sklearn.manifold import TSNE

    vectors = np.asarray(vectors, dtype=np.float64)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    perplexity = float(min(30.0, max(2.0, (len(vectors) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(vectors)


def tsne_figure(split, image_embeddings, text_embeddings, products, items, seed):
    """Image (circles) and text (triangles) embeddings of ``products`` / ``items`` in one
    t-SNE, coloured by the products' category."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    images = image_embeddings[items].float().numpy()
    texts = text_embeddings[products].float().numpy()
    points = tsne_embedding(np.concatenate([images, texts]), seed)
    image_points, text_points = points[:len(items)], points[len(items):]
    image_categories = [split.category(split.item_product[i]) for i in items]
    text_categories = [split.category(p) for p in products]
    categories = sorted(set(text_categories))
    palette = colormaps["tab10" if len(categories) <= 10 else "tab20"]
    colour = {name: palette(i % palette.N) for i, name in enumerate(categories)}

    figure = Figure(figsize=(7.5, 6.2), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    for name in categories:
        chosen = [i for i, c in enumerate(image_categories) if c == name]
        axes.scatter(image_points[chosen, 0], image_points[chosen, 1], s=16, marker="o",
                     color=colour[name], alpha=0.75, linewidths=0)
        chosen = [i for i, c in enumerate(text_categories) if c == name]
        axes.scatter(text_points[chosen, 0], text_points[chosen, 1], s=34, marker="^",
                     color=colour[name], edgecolors="black", linewidths=0.5)
    handles = [Line2D([], [], linestyle="", marker="s", markersize=7, color=colour[name],
                      label=name) for name in categories]
    handles += [Line2D([], [], linestyle="", marker="o", color="grey", label="image"),
                Line2D([], [], linestyle="", marker="^", color="grey",
                       markeredgecolor="black", label="text")]
    axes.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
                frameon=False)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(f"t-SNE of {len(items)} image and {len(products)} text embeddings, "
                   f"FashionGen {split.name} (seed {seed})", fontsize=9)
    return figure
