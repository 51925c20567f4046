"""A study's results: summary table, CSV, plot (PNG and SVG) and run record (written atomically)."""
import csv
import json
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ..io import atomic_open, atomic_write_text
from .study import LABELS

KEYS = ("method", "shots", "seed", "seconds")


def metric_names(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """The accuracy columns of the rows (top1, top5 or base_*, new_*, H)."""
    return [k for k in rows[0] if k not in KEYS]


def summarise(rows: Sequence[Mapping[str, Any]]) -> Dict[Tuple[str, int], Dict[str, Tuple[float, float]]]:
    """{(method, shots): {metric: (mean, std over seeds)}}; NaN when any seed is NaN."""
    out: Dict[Tuple[str, int], list] = {}
    for r in rows:
        out.setdefault((r["method"], r["shots"]), []).append(r)
    summary = {}
    for key, group in out.items():
        summary[key] = {}
        for m in metric_names(rows):
            v = np.array([g[m] for g in group], dtype=float)
            summary[key][m] = (float(np.mean(v)), float(np.std(v))) if np.isfinite(v).all() \
                else (float("nan"), float("nan"))
    return summary


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A text table: method, shots, then 'mean ± std' per metric ('-' for NaN)."""
    summary = summarise(rows)
    metrics = metric_names(rows)
    head = ["method", "shots"] + metrics
    lines = []
    for (method, shots), vals in summary.items():
        cells = [LABELS[method], str(shots)]
        for m in metrics:
            mean, std = vals[m]
            cells.append("-" if not np.isfinite(mean) else f"{mean:.2f} ± {std:.2f}")
        lines.append(cells)
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: " | ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(head), "-+-".join("-" * w for w in widths)] + [fmt(l) for l in lines])


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per row (floats to 4 decimals), written atomically; returns path."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def accuracy_figure(rows: Sequence[Mapping[str, Any]], title: str = "Few-shot accuracy"):
    """Mean top-1 (or H for base-to-new) against shots (log axis), one line
    per method, error bars the standard deviation over seeds."""
    from ..plot import line_figure
    summary = summarise(rows)
    metric = "H" if "H" in rows[0] else "top1"
    series: Dict[str, Tuple[list, list, list]] = {}
    for (method, shots), vals in summary.items():
        xs, ys, errs = series.setdefault(LABELS[method], ([], [], []))
        mean, std = vals.get(metric, (float("nan"), float("nan")))
        xs.append(shots)
        ys.append(mean)
        errs.append(std)
    seeds = len({r["seed"] for r in rows})
    ylabel = "harmonic mean of base/new top-1 (%)" if metric == "H" else "top-1 accuracy (%)"
    if seeds > 1:
        ylabel += f", mean ± std over {seeds} seeds"
    return line_figure(series, title, "shots per class (log scale)", ylabel, log_x=True)


def write_plot(path: str, rows: Sequence[Mapping[str, Any]], title: str = "Few-shot accuracy") -> str:
    """``accuracy_figure`` as PNG at ``path`` and SVG beside it; returns path."""
    from ..plot import save_figure
    return save_figure(accuracy_figure(rows, title), path)


def write_run_record(path: str, record: Mapping[str, Any]) -> str:
    """The run's arguments and backbone as JSON, written atomically; returns path."""
    atomic_write_text(path, json.dumps(dict(record), indent=1) + "\n")
    return os.fspath(path)
