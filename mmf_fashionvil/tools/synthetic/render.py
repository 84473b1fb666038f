"""Product photos: silhouettes drawn from the attributes, pattern textures attached to the
garment, and the views (background, pose) one product is photographed in."""
import functools
import math
import random
from typing import NamedTuple, Tuple

import numpy as np
from PIL import Image, ImageDraw

from mmf_fashionvil.tools.synthetic.products import COLOURS, Product


class View(NamedTuple):
    """How one photo of a product is taken. Geometry in units of the image side."""
    background: int = 214  # grey level
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    angle: float = 0.0  # degrees
    flip: bool = False


CANONICAL_VIEW = View()


def sample_view(rng: random.Random) -> View:
    return View(background=rng.randint(196, 228), scale=rng.uniform(0.86, 1.04),
                shift_x=rng.uniform(-0.06, 0.06), shift_y=rng.uniform(-0.04, 0.04),
                angle=rng.uniform(-7.0, 7.0), flip=rng.random() < 0.5)


def _mirror(right):
    """Closed outline from its right half (x >= 0.5, listed top to bottom)."""
    return list(right) + [(1.0 - x, y) for x, y in reversed(right)]


def _ellipse(cx, cy, rx, ry, points=20):
    return [(cx + rx * math.cos(2 * math.pi * i / points), cy + ry * math.sin(2 * math.pi * i / points))
            for i in range(points)]


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


class _Shape:
    """Polygons in unit coordinates: ``fill`` (garment), ``lines`` (thick garment strokes:
    handles, straps), ``cuts`` (background again: necklines), ``details`` (shaded
    polygons) and ``detail_lines`` (shaded strokes: seams, pleats)."""

    def __init__(self):
        self.fill, self.lines, self.cuts, self.details, self.detail_lines = [], [], [], [], []


def _torso(shape, top, hem_y, shoulder, waist, hem, sleeve, neck=0.065):
    c = 0.5
    right = [(c + neck, top)]
    if sleeve == "sleeveless":
        right += [(c + shoulder - 0.05, top + 0.01), (c + shoulder - 0.03, top + 0.14)]
    elif sleeve == "short":
        right += [(c + shoulder, top + 0.03), (c + shoulder + 0.11, top + 0.13),
                  (c + shoulder + 0.05, top + 0.19), (c + shoulder - 0.01, top + 0.14)]
    else:
        right += [(c + shoulder, top + 0.03), (c + shoulder + 0.08, top + 0.09),
                  (c + shoulder + 0.12, top + 0.43), (c + shoulder + 0.05, top + 0.44),
                  (c + shoulder - 0.01, top + 0.16)]
    right += [(c + waist, min(top + 0.26, hem_y - 0.04)), (c + hem, hem_y)]
    shape.fill.append(_mirror(right))


def _neckline(shape, kind, top, neck=0.065):
    c = 0.5
    if kind == "round":
        shape.cuts.append(_ellipse(c, top, neck, 0.07))
    elif kind == "square":
        shape.cuts.append(_rect(c - neck, top - 0.02, c + neck, top + 0.07))
    else:
        shape.cuts.append([(c - neck, top - 0.02), (c + neck, top - 0.02), (c, top + 0.14)])


def silhouette(product: Product) -> _Shape:
    """The outline of a product in the unit square, from its (sub)category and its sleeve,
    neckline and length attributes."""
    s, p, c = _Shape(), product, 0.5
    if p.category == "dress":
        hem_y, hem = {"mini": (0.56, 0.19), "midi": (0.74, 0.23), "maxi": (0.93, 0.27)}[p.subcategory]
        _torso(s, 0.12, hem_y, 0.15, 0.11, hem, p.sleeve)
        _neckline(s, p.neckline, 0.12)
    elif p.category == "top":
        hem_y = {"tee": 0.62, "tank": 0.6, "crop": 0.42}[p.subcategory]
        _torso(s, 0.16, hem_y, 0.16, 0.14, 0.16, p.sleeve)
        _neckline(s, p.neckline, 0.16)
    elif p.category == "shirt":
        hem_y, hem = {"blouse": (0.62, 0.22), "polo": (0.62, 0.17), "tunic": (0.82, 0.19)}[p.subcategory]
        _torso(s, 0.14, hem_y, 0.18, 0.16, hem, p.sleeve)
        s.cuts.append(_ellipse(c, 0.14, 0.05, 0.04))
        if p.subcategory == "polo":  # collar and placket
            s.details += [[(c - 0.08, 0.13), (c - 0.005, 0.2), (c - 0.03, 0.13)],
                          [(c + 0.08, 0.13), (c + 0.005, 0.2), (c + 0.03, 0.13)]]
            s.detail_lines.append(([(c, 0.19), (c, 0.32)], 0.015))
        elif p.subcategory == "tunic":
            s.detail_lines.append(([(c, 0.18), (c, 0.82)], 0.012))
    elif p.category == "jacket":
        hem_y = {"blazer": 0.68, "bomber": 0.56, "parka": 0.84}[p.subcategory]
        _torso(s, 0.13, hem_y, 0.2, 0.18, 0.2 if p.subcategory != "bomber" else 0.17, "long")
        if p.subcategory == "blazer":  # deep V opening with lapels
            s.cuts.append([(c - 0.06, 0.11), (c + 0.06, 0.11), (c, 0.4)])
            s.details += [[(c - 0.06, 0.13), (c - 0.11, 0.2), (c - 0.01, 0.38)],
                          [(c + 0.06, 0.13), (c + 0.11, 0.2), (c + 0.01, 0.38)]]
            s.detail_lines.append(([(c, 0.4), (c, hem_y)], 0.012))
        elif p.subcategory == "bomber":  # ribbed hem band and cuffs
            s.cuts.append(_ellipse(c, 0.13, 0.05, 0.04))
            s.details.append(_rect(c - 0.17, hem_y - 0.05, c + 0.17, hem_y))
            s.detail_lines.append(([(c, 0.17), (c, hem_y)], 0.012))
        else:  # parka: hood and zip
            s.fill.append(_ellipse(c, 0.11, 0.1, 0.1))
            s.details.append(_ellipse(c, 0.12, 0.06, 0.06))
            s.detail_lines.append(([(c, 0.19), (c, hem_y)], 0.012))
    elif p.category == "pants":
        hem_y, outer, inner = {"jeans": (0.92, 0.16, 0.03), "trousers": (0.92, 0.22, 0.02),
                               "joggers": (0.88, 0.12, 0.04), "shorts": (0.44, 0.2, 0.02)}[p.subcategory]
        s.fill.append([(0.32, 0.1), (0.68, 0.1), (c + outer, hem_y), (c + inner, hem_y), (c, 0.38),
                       (c - inner, hem_y), (c - outer, hem_y)])
        s.details.append(_rect(0.32, 0.1, 0.68, 0.14))
        if p.subcategory == "joggers":
            s.details += [_rect(c + inner, hem_y - 0.04, c + outer + 0.01, hem_y),
                          _rect(c - outer - 0.01, hem_y - 0.04, c - inner, hem_y)]
    elif p.category == "skirt":
        hem_y = {"mini": 0.5, "midi": 0.68, "maxi": 0.88}[p.length]
        hem = {"pencil": 0.16, "pleated": 0.24, "flared": 0.31}[p.subcategory]
        right = [(0.64, 0.22), (c + hem, hem_y)]
        if p.subcategory == "flared":
            right.append((c + hem * 0.5, hem_y + 0.03))
        s.fill.append(_mirror(right))
        s.details.append(_rect(0.36, 0.22, 0.64, 0.26))
        if p.subcategory == "pleated":
            for i in range(-3, 4):
                s.detail_lines.append(([(c + 0.035 * i, 0.26), (c + hem / 0.14 * 0.035 * i, hem_y)], 0.01))
    elif p.category == "shoes":
        outline = {
            "sneakers": [(0.15, 0.6), (0.45, 0.54), (0.6, 0.6), (0.82, 0.67), (0.87, 0.8), (0.15, 0.8)],
            "boots": [(0.3, 0.2), (0.54, 0.2), (0.56, 0.6), (0.82, 0.67), (0.87, 0.8), (0.3, 0.8)],
            "heels": [(0.18, 0.48), (0.31, 0.46), (0.56, 0.66), (0.85, 0.7), (0.87, 0.77), (0.5, 0.75),
                      (0.3, 0.62), (0.27, 0.84), (0.22, 0.84), (0.2, 0.6)],
        }[p.subcategory]
        s.fill.append(outline)
        if p.subcategory != "heels":
            s.details.append(_rect(0.15 if p.subcategory == "sneakers" else 0.3, 0.75, 0.87, 0.8))
    else:  # bag
        if p.subcategory == "tote":
            s.fill.append([(0.24, 0.4), (0.76, 0.4), (0.81, 0.86), (0.19, 0.86)])
            s.lines.append(([(0.34, 0.41), (0.38, 0.2), (0.62, 0.2), (0.66, 0.41)], 0.04))
        elif p.subcategory == "clutch":
            s.fill.append(_rect(0.15, 0.44, 0.85, 0.71))
            s.detail_lines.append(([(0.15, 0.45), (0.5, 0.6), (0.85, 0.45)], 0.02))
        else:
            s.fill.append([(0.34, 0.18), (0.66, 0.18), (0.73, 0.26), (0.73, 0.86), (0.27, 0.86), (0.27, 0.26)])
            s.lines.append(([(0.42, 0.19), (0.44, 0.1), (0.56, 0.1), (0.58, 0.19)], 0.03))
            s.details.append(_rect(0.34, 0.56, 0.66, 0.8))
    return s


def _pattern_mask(pattern, u, v):
    """Where the pattern's accent colour shows, in garment coordinates (u, v)."""
    if pattern == "striped":  # horizontal stripes
        return np.mod(v, 0.09) < 0.045
    if pattern == "checked":
        return (np.floor(u / 0.11) + np.floor(v / 0.11)) % 2 == 1
    if pattern == "dotted":  # staggered grid of dots
        period = 0.1
        row = np.floor(v / period)
        du = np.mod(u + 0.5 * period * (row % 2), period) - period / 2
        dv = np.mod(v, period) - period / 2
        return du * du + dv * dv < 0.027 ** 2
    if pattern == "floral":  # four-petal flowers on a staggered grid
        period, offset, radius = 0.16, 0.028, 0.024
        row = np.floor(v / period)
        du = np.mod(u + 0.5 * period * (row % 2), period) - period / 2
        dv = np.mod(v, period) - period / 2
        petals = np.zeros(u.shape, dtype=bool)
        for ou, ov in ((offset, 0), (-offset, 0), (0, offset), (0, -offset)):
            petals |= (du - ou) ** 2 + (dv - ov) ** 2 < radius ** 2
        return petals
    return np.zeros(u.shape, dtype=bool)


def accent_colour(colour: str) -> Tuple[int, int, int]:
    """The pattern's second colour: near-black on light colours, near-white on dark ones."""
    r, g, b = COLOURS[colour]
    return (30, 30, 30) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (236, 236, 236)


def render_product(product: Product, size: int, view: View = CANONICAL_VIEW) -> Image.Image:
    """An RGB ``size`` x ``size`` photo of ``product`` on a plain grey background."""
    supersample = 4 if size <= 96 else 2  # drawn large then box-filtered: smooth edges
    side = size * supersample
    angle = math.radians(view.angle)
    cos, sin = math.cos(angle), math.sin(angle)

    def to_pixels(points):
        out = []
        for x, y in points:
            x, y = x - 0.5, y - 0.5
            x, y = view.scale * (cos * x - sin * y) + 0.5 + view.shift_x, \
                view.scale * (sin * x + cos * y) + 0.5 + view.shift_y
            if view.flip:
                x = 1.0 - x
            out.append((x * side, y * side))
        return out

    shape = silhouette(product)
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for polygon in shape.fill:
        draw.polygon(to_pixels(polygon), fill=255)
    for line, width in shape.lines:
        draw.line(to_pixels(line), fill=255, width=max(1, round(width * view.scale * side)), joint="curve")
    for polygon in shape.cuts:
        draw.polygon(to_pixels(polygon), fill=0)
    shade = Image.new("L", (side, side), 0)
    shade_draw = ImageDraw.Draw(shade)
    for polygon in shape.details:
        shade_draw.polygon(to_pixels(polygon), fill=255)
    for line, width in shape.detail_lines:
        shade_draw.line(to_pixels(line), fill=255, width=max(1, round(width * view.scale * side)))

    # Each supersampled pixel gets one of five colours (palette index), then the box filter
    # of reduce() mixes them: background, fabric, pattern accent, and both shaded.
    base = COLOURS[product.colour]
    accent = accent_colour(product.colour)
    garment = np.asarray(mask) >> 7
    labels = garment * (1 + 2 * (np.asarray(shade) >> 7))
    if product.pattern != "plain":
        labels += garment * _posed_pattern(product.pattern, side, view)
    palette = [view.background] * 3
    for colour in (base, accent, _shaded(base, base), _shaded(accent, base)):
        palette += colour
    image = Image.fromarray(labels.astype(np.uint8), "P")
    image.putpalette(palette)
    return image.convert("RGB").reduce(supersample)


def _shaded(colour, fabric):
    """Seams and trims: darker, or lighter on very dark fabric, so they stay visible."""
    if sum(fabric) > 120:
        return [round(0.62 * c) for c in colour]
    return [round(0.6 * c + 90) for c in colour]


@functools.lru_cache(maxsize=16)
def _pattern_texture(pattern, side):
    """The pattern's accent mask (0/1) over garment coordinates [-0.5, 1.5)^2, ``side``
    pixels per unit: wide enough for every view's pose."""
    grid = (np.arange(2 * side, dtype=np.float32) + 0.5) / side - 0.5
    u, v = np.meshgrid(grid, grid)
    return Image.fromarray(_pattern_mask(pattern, u, v).astype(np.uint8), "L")


def _posed_pattern(pattern, side, view):
    """The texture resampled through the inverse of the view's transform (PIL's affine
    transform maps each output pixel to its garment coordinates): textures are attached to
    the garment and follow its pose."""
    cos, sin = math.cos(math.radians(view.angle)), math.sin(math.radians(view.angle))
    x_sign, x_origin = (-1.0, 1.0) if view.flip else (1.0, 0.0)
    k = 1.0 / view.scale
    dx, dy = x_origin - 0.5 - view.shift_x, -0.5 - view.shift_y
    coefficients = (k * cos * x_sign, k * sin, side * k * (cos * dx + sin * dy) + side,
                    -k * sin * x_sign, k * cos, side * k * (cos * dy - sin * dx) + side)
    posed = _pattern_texture(pattern, side).transform(
        (side, side), Image.AFFINE, coefficients, resample=Image.NEAREST, fillcolor=0)
    return np.asarray(posed)
