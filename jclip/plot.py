"""The report figures (line, bar, heatmap), drawn with matplotlib's Agg backend.

    line_plot("acc.png", {"CoOp": ([1, 4, 16], [60.1, 70.2, 75.0], [0.8, 0.5, 0.3])},
              "Accuracy vs shots", "shots per class", "top-1 (%)", log_x=True)
    bar_plot("speed.png", ["jittor", "torch"], [1.2, 1.5], "Step time", "s")
    heatmap_plot("routing.png", ["dog", "not dog"], ["LP++", "dog head"],
                 [[3, 97], [88, 12]], "Routing")

Each ``*_plot`` writes a PNG at ``path`` and an SVG beside it (same stem),
both atomically, and returns ``path``; the matching ``*_figure`` returns the
matplotlib Figure itself (what the tests read the labels from).

Every figure has its own ``Figure`` and Agg canvas: pyplot's global state is
never touched, so plotting needs no display, is safe beside a user's own
pyplot session and leaves no figure open.  matplotlib is imported inside the
functions, so ``import jclip`` does not import it.

Non-finite values are left out (a line is broken there, a bar is not drawn),
so a missing result never draws a spike to zero.
"""
import math
import os

from .io import atomic_open

DPI = 100
SIZE = (8.0, 5.2)            # inches: 800 x 520 pixels at DPI
LEGEND_INSIDE_MAX = 5        # more series than this: the legend goes beside the axes
# a marker and a dash pattern per series as well as a colour: lines that
# coincide (common on small validation sets) stay visible, also in grey print
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
DASHES = ("-", "--", "-.", ":")


def _figure(size=SIZE):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def svg_path(path):
    """Where the SVG of the PNG ``path`` goes: same folder and stem."""
    return os.path.splitext(os.fspath(path))[0] + ".svg"


def save_figure(fig, path):
    """Write ``fig`` as PNG at ``path`` and as SVG beside it (temporary names,
    then rename); returns ``path``."""
    from matplotlib import rc_context
    path = os.fspath(path)
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=DPI)
    # no timestamp and a fixed salt for the element ids (else a fresh uuid4):
    # the same figure gives the same bytes, so a results folder diffs cleanly
    with atomic_open(svg_path(path)) as f, rc_context({"svg.hashsalt": "jclip"}):
        fig.savefig(f, format="svg", metadata={"Date": None})
    return path


def _finite(v):
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _fmt(v):
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.2g}"


def _label_axes(ax, title, xlabel, ylabel):
    ax.set_title(str(title))
    ax.set_xlabel(str(xlabel))
    ax.set_ylabel(str(ylabel))


def line_figure(series, title="", xlabel="", ylabel="", log_x=False):
    """One line with markers per ``series`` entry: name -> (xs, ys) or
    (xs, ys, errors), errors drawn as error bars (e.g. the std over seeds).
    ``log_x``: logarithmic x axis (points at x <= 0 left out), ticked at the
    data's x values (1, 2, 4, 8, 16 shots read as such)."""
    if not series:
        raise ValueError("line_plot: no series to draw")
    fig = _figure()
    ax = fig.add_subplot()
    xticks = set()
    for k, (name, entry) in enumerate(series.items()):
        if len(entry) not in (2, 3):
            raise ValueError(f"line_plot: series {name!r} must be (xs, ys) or (xs, ys, errors)")
        xs, ys = list(entry[0]), list(entry[1])
        errs = list(entry[2]) if len(entry) == 3 and entry[2] is not None else None
        if len(xs) != len(ys) or (errs is not None and len(errs) != len(xs)):
            raise ValueError(f"line_plot: series {name!r} has {len(xs)} x values, {len(ys)} y values"
                             + ("" if errs is None else f" and {len(errs)} errors"))
        keep = [i for i in range(len(xs)) if _finite(xs[i]) and (not log_x or float(xs[i]) > 0)]
        keep.sort(key=lambda i: float(xs[i]))
        x = [float(xs[i]) for i in keep]
        # NaN (not a dropped point) where y is missing: matplotlib breaks the line there
        y = [float(ys[i]) if _finite(ys[i]) else math.nan for i in keep]
        e = None if errs is None else [float(errs[i]) if _finite(errs[i]) else 0.0 for i in keep]
        xticks.update(x)
        ax.errorbar(x, y, yerr=e, marker=MARKERS[k % len(MARKERS)], markersize=5, linewidth=1.6,
                    linestyle=DASHES[k % len(DASHES)], capsize=3, label=str(name))
    if log_x:
        ax.set_xscale("log")
        ax.minorticks_off()
    if xticks and (log_x or len(xticks) <= 12):
        ticks = sorted(xticks)
        ax.set_xticks(ticks, labels=[_fmt(t) for t in ticks])
    ax.grid(True, alpha=0.3)
    _label_axes(ax, title, xlabel, ylabel)
    if len(series) <= LEGEND_INSIDE_MAX:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return fig


def line_plot(path, series, title="", xlabel="", ylabel="", log_x=False):
    """``line_figure`` saved as ``path`` (PNG) and its SVG; returns ``path``."""
    return save_figure(line_figure(series, title, xlabel, ylabel, log_x), path)


def bar_figure(labels, values, title="", ylabel="", errors=None, xlabel=""):
    """One bar per label with its value written above it; ``errors``, when
    given, as error bars."""
    labels, values = [str(s) for s in labels], [float(v) for v in values]
    if not labels or len(labels) != len(values):
        raise ValueError("bar_plot: need as many values as labels (at least one)")
    if errors is not None and len(errors) != len(values):
        raise ValueError("bar_plot: need as many errors as values")
    from matplotlib import rcParams
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    fig = _figure()
    ax = fig.add_subplot()
    shown = [v if math.isfinite(v) else 0.0 for v in values]
    bars = ax.bar(range(len(labels)), shown, color=[colours[i % len(colours)] for i in range(len(labels))],
                  yerr=None if errors is None else [float(e) if _finite(e) else 0.0 for e in errors],
                  capsize=4)
    for bar, v in zip(bars, values):
        if not math.isfinite(v):
            bar.set_visible(False)
    ax.bar_label(bars, labels=[_fmt(round(v, 4)) if math.isfinite(v) else "n/a" for v in values],
                 padding=2, fontsize="small")
    ax.set_xticks(range(len(labels)), labels=labels,
                  rotation=20 if sum(map(len, labels)) > 60 else 0,
                  ha="right" if sum(map(len, labels)) > 60 else "center")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.margins(y=0.12)
    ax.grid(True, axis="y", alpha=0.3)
    _label_axes(ax, title, xlabel, ylabel)
    return fig


def bar_plot(path, labels, values, title="", ylabel="", errors=None, xlabel=""):
    """``bar_figure`` saved as ``path`` (PNG) and its SVG; returns ``path``."""
    return save_figure(bar_figure(labels, values, title, ylabel, errors, xlabel), path)


def heatmap_figure(row_labels, col_labels, counts, title="", xlabel="routed to", ylabel="true group"):
    """A confusion table: each cell holds its count and its share of its row,
    shaded by that share (white 0, dark blue 1), with a colour bar."""
    rows, cols = [str(r) for r in row_labels], [str(c) for c in col_labels]
    if not rows or not cols or len(counts) != len(rows) or any(len(r) != len(cols) for r in counts):
        raise ValueError("heatmap_plot: counts must be len(row_labels) x len(col_labels)")
    import numpy as np
    table = np.array([[float(v) for v in r] for r in counts])
    totals = table.sum(axis=1, keepdims=True)
    shares = np.divide(table, totals, out=np.zeros_like(table), where=totals > 0)
    width = min(16.0, 3.0 + 0.09 * max(map(len, rows)) + 1.7 * len(cols))
    fig = _figure((width, min(12.0, 1.9 + 0.55 * len(rows))))
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            text = f"{table[i, j]:g}" + (f" ({100 * shares[i, j]:.0f}%)" if totals[i, 0] > 0 else "")
            ax.text(j, i, text, ha="center", va="center", fontsize="small",
                    color="white" if shares[i, j] > 0.55 else "black")
    ax.set_xticks(range(len(cols)), labels=cols)
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(len(cols) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(rows) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)   # the minor ticks only place the cell borders
    for side in ax.spines.values():
        side.set_visible(False)
    fig.colorbar(image, ax=ax, label="share of the row", fraction=0.05)
    _label_axes(ax, title, xlabel, ylabel)
    return fig


def heatmap_plot(path, row_labels, col_labels, counts, title="", xlabel="routed to", ylabel="true group"):
    """``heatmap_figure`` saved as ``path`` (PNG) and its SVG; returns ``path``."""
    return save_figure(heatmap_figure(row_labels, col_labels, counts, title, xlabel, ylabel), path)


def figure_texts(fig):
    """Every string a figure shows: titles, axis labels, tick labels, legend
    entries, cell annotations, colour-bar labels (what a reader sees)."""
    fig.canvas.draw()     # tick labels are filled in at draw time
    out = []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        out += [t.get_text() for t in ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
    return [s for s in out if s]
