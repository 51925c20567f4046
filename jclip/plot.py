"""Small PNG line, bar and table plots drawn with Pillow (no matplotlib dependency).

    line_plot("acc.png", {"CoOp": ([1, 5, 16], [60.1, 70.2, 75.0])},
              "Accuracy vs shots", "shots", "top-1 (%)")
    bar_plot("speed.png", ["jittor", "torch"], [1.2, 1.5], "Step time", "s")
    heatmap_plot("routing.png", ["dog", "not dog"], ["LP++", "dog head"],
                 [[3, 97], [88, 12]], "Routing")

Non-finite values are skipped (a line is broken there), so a missing result
never draws a spike to zero.

Text is drawn in a real TrueType font (DejaVu Sans, else Liberation Sans or
Arial) when one is installed, else in Pillow's bitmap font: Pillow's built-in
scalable default (10 px Aileron) draws a space 2 px wide, which reads as no
space at all ("ViTweight", "seen, notdog").
"""
import functools
import math

from PIL import Image, ImageDraw, ImageFont

from .io import atomic_open

WIDTH, HEIGHT = 800, 520
MARGIN = dict(left=80, right=190, top=50, bottom=60)
FONT_SIZE = 12
FONT_FILES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
              "/usr/share/fonts/TTF/DejaVuSans.ttf", "LiberationSans-Regular.ttf",
              "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf", "Arial.ttf")
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def nice_ticks(lo, hi, count=6):
    """Round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - step * 1e-9 or len(ticks) < 2:
        ticks.append(round(start + len(ticks) * step, 10))
    return ticks


@functools.lru_cache(maxsize=None)
def font(size=FONT_SIZE, files=FONT_FILES):
    """The first TrueType font of ``files`` that loads (Pillow also searches the
    system font folders for a bare name), else Pillow's bitmap font, whose
    spaces are visible."""
    for name in files:
        try:
            return ImageFont.truetype(name, size)
        except (OSError, ImportError):    # not installed / Pillow without FreeType
            continue
    bitmap = getattr(ImageFont, "load_default_imagefont", None)   # Pillow >= 10.1
    return bitmap() if bitmap else ImageFont.load_default()


def text_width(fnt, s):
    """Width in pixels of ``s`` in ``fnt``."""
    box = fnt.getbbox(str(s))
    return box[2] - min(box[0], 0)


def draw_text(draw, xy, s, fnt, anchor="la", fill="black"):
    """Text at ``xy`` placed by a two-letter ``anchor`` (l/m/r, then a/t/m/b as
    in Pillow); works for bitmap fonts too, which take no anchor."""
    s = str(s)
    if isinstance(fnt, ImageFont.FreeTypeFont):
        draw.text(xy, s, fill=fill, font=fnt, anchor=anchor)
        return
    x0, y0, x1, y1 = fnt.getbbox(s)
    w, h = x1 - x0, y1 - y0
    x = xy[0] - {"l": 0, "m": w / 2, "r": w}[anchor[0]] - x0
    y = xy[1] - {"a": 0, "t": 0, "m": h / 2, "b": h, "s": h, "d": h}[anchor[1]] - y0
    draw.text((x, y), s, fill=fill, font=fnt)


def _fmt(v):
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.2g}"


class _Canvas:
    """An image with a plotting box mapping data (x, y) ranges to pixels."""

    def __init__(self, title, xlabel, ylabel, yticks, xrange):
        self.img = Image.new("RGB", (WIDTH, HEIGHT), "white")
        self.draw = ImageDraw.Draw(self.img)
        self.font = font()
        self.x0, self.x1 = MARGIN["left"], WIDTH - MARGIN["right"]
        self.y0, self.y1 = HEIGHT - MARGIN["bottom"], MARGIN["top"]
        self.ylo, self.yhi = yticks[0], yticks[-1]
        self.xlo, self.xhi = xrange
        d = self.draw
        d.rectangle([self.x0, self.y1, self.x1, self.y0], outline="black")
        for t in yticks:
            py = self.py(t)
            d.line([self.x0, py, self.x1, py], fill="#e0e0e0")
            d.line([self.x0 - 4, py, self.x0, py], fill="black")
            self.text(self.x0 - 8, py, _fmt(t), anchor="rm")
        self.text((self.x0 + self.x1) / 2, 25, title, anchor="mm")
        self.text((self.x0 + self.x1) / 2, HEIGHT - 20, xlabel, anchor="mm")
        self.text(12, self.y1 - 20, ylabel, anchor="lm")

    def text(self, x, y, s, anchor="la", fill="black"):
        draw_text(self.draw, (x, y), s, self.font, anchor, fill)

    def px(self, x):
        return self.x0 + (x - self.xlo) / (self.xhi - self.xlo) * (self.x1 - self.x0)

    def py(self, y):
        return self.y0 - (y - self.ylo) / (self.yhi - self.ylo) * (self.y0 - self.y1)

    def legend(self, names):
        for i, name in enumerate(names):
            y = self.y1 + 10 + 18 * i
            colour = COLOURS[i % len(COLOURS)]
            self.draw.line([self.x1 + 12, y, self.x1 + 32, y], fill=colour, width=3)
            self.text(self.x1 + 38, y, name, anchor="lm")

    def save(self, path):
        return save_png(self.img, path)


def save_png(img, path):
    """Write a PNG atomically (temporary name, then rename)."""
    with atomic_open(path) as f:
        img.save(f, format="PNG")
    return path


def _finite(v):
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def line_plot(path, series, title="", xlabel="", ylabel="", log_x=False):
    """One line with markers per ``series`` entry name -> (xs, ys)."""
    if not series:
        raise ValueError("line_plot: no series to draw")
    fx = (lambda v: math.log10(v)) if log_x else float
    pts = {n: [(fx(x), float(y)) for x, y in zip(xs, ys) if _finite(x) and _finite(y)
               and (not log_x or x > 0)] for n, (xs, ys) in series.items()}
    allx = [p[0] for ps in pts.values() for p in ps] or [0.0, 1.0]
    ally = [p[1] for ps in pts.values() for p in ps] or [0.0, 1.0]
    xlo, xhi = min(allx), max(allx)
    pad = 0.05 * (xhi - xlo) if xhi > xlo else 0.5
    c = _Canvas(title, xlabel, ylabel, nice_ticks(min(ally), max(ally)), (xlo - pad, xhi + pad))
    for x in sorted({x for xs, _ in series.values() for x in xs if _finite(x)}):
        if log_x and x <= 0:
            continue
        px = c.px(fx(x))
        c.draw.line([px, c.y0, px, c.y0 + 4], fill="black")
        c.text(px, c.y0 + 8, _fmt(x), anchor="mt")
    for i, (name, _) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        xy = [(c.px(x), c.py(y)) for x, y in pts[name]]
        if len(xy) > 1:
            c.draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            c.draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    c.legend(list(series))
    return c.save(path)


def bar_plot(path, labels, values, title="", ylabel=""):
    """One bar per label, its value written above it."""
    labels, values = [str(s) for s in labels], [float(v) for v in values]
    if not labels or len(labels) != len(values):
        raise ValueError("bar_plot: need as many values as labels (at least one)")
    shown = [v for v in values if math.isfinite(v)] or [0.0]
    c = _Canvas(title, "", ylabel, nice_ticks(min(0.0, min(shown)), max(0.0, max(shown))),
                (0.0, float(len(labels))))
    base = c.py(max(c.ylo, min(0.0, c.yhi)))
    for i, (label, v) in enumerate(zip(labels, values)):
        left, right = c.px(i + 0.15), c.px(i + 0.85)
        c.text((left + right) / 2, c.y0 + 8, label, anchor="mt")
        if not math.isfinite(v):
            continue
        top = c.py(v)
        c.draw.rectangle([left, min(top, base), right, max(top, base)], fill=COLOURS[i % len(COLOURS)])
        c.text((left + right) / 2, min(top, base) - 4, _fmt(round(v, 4)), anchor="mb")
    return c.save(path)


def heatmap_plot(path, row_labels, col_labels, counts, title=""):
    """A table of counts, each cell shaded by its share of its row (white 0,
    dark blue 1): a confusion table read at a glance."""
    rows, cols = [str(r) for r in row_labels], [str(c) for c in col_labels]
    if not rows or not cols or len(counts) != len(rows) or any(len(r) != len(cols) for r in counts):
        raise ValueError("heatmap_plot: counts must be len(row_labels) x len(col_labels)")
    fnt = font()
    cell_w, cell_h = 130, 44
    left = 30 + max(int(text_width(fnt, r)) for r in rows)
    top = 96
    img = Image.new("RGB", (left + cell_w * len(cols) + 30, top + cell_h * len(rows) + 50), "white")
    d = ImageDraw.Draw(img)
    draw_text(d, (img.width / 2, 25), str(title), fnt, "mm", "black")
    draw_text(d, (left + cell_w * len(cols) / 2, 58), "routed to", fnt, "mm", "black")
    for j, c in enumerate(cols):
        draw_text(d, (left + cell_w * (j + 0.5), top - 10), c, fnt, "mb", "black")
    for i, (r, row) in enumerate(zip(rows, counts)):
        y = top + cell_h * i
        draw_text(d, (left - 10, y + cell_h / 2), r, fnt, "rm", "black")
        total = sum(float(v) for v in row)
        for j, v in enumerate(row):
            share = float(v) / total if total > 0 else 0.0
            shade = tuple(int(255 - share * (255 - c)) for c in (31, 80, 160))
            box = [left + cell_w * j, y, left + cell_w * (j + 1), y + cell_h]
            d.rectangle(box, fill=shade, outline="#888888")
            ink = "white" if share > 0.55 else "black"
            label = f"{int(v)}" + (f" ({100 * share:.0f}%)" if total > 0 else "")
            draw_text(d, ((box[0] + box[2]) / 2, y + cell_h / 2), label, fnt, "mm", ink)
    draw_text(d, (10, img.height - 20), "rows: true group; cells: images (share of the row)",
              fnt, "lm", "#555555")
    return save_png(img, path)
