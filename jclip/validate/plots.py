"""The validation report's and the sweep's figures (PNG, SVG beside each).

Kept apart from report.py/sweep.py so each figure can be drawn, and read
back, from the numbers alone.
"""
import math
import os
from typing import Dict, List, Mapping, Sequence, Tuple

from .. import plot


def _pct(v):
    return math.nan if v is None else 100 * v


def report_plots(out: str, trained: Mapping, simulated: Mapping,
                 curves: Mapping[str, Sequence[Tuple[float, float]]], mix_label: str) -> List[str]:
    """accuracy_per_domain.png, routing.png and, when ``curves`` (name ->
    [(weight, top-1)]) is not empty, mixing_weight.png in ``out``; returns
    the names written.  ``trained``/``simulated``: metrics.measure's results."""
    doms = list(trained["per_domain"])
    plot.bar_plot(os.path.join(out, "accuracy_per_domain.png"),
                  doms + ["held-out (sim.)"],
                  [round(_pct(trained["per_domain"][x]["top1"]), 2) for x in doms]
                  + [round(_pct(simulated["per_group"]["held-out"]["top1"]), 2)],
                  "Cascade top-1 per domain (trained) and on held-out classes (simulated)",
                  "top-1 (%)", xlabel="domain")
    tr, sm = trained["routing"], simulated["routing"]
    plot.heatmap_plot(os.path.join(out, "routing.png"),
                      [f"trained: {r}" for r in tr["rows"]] + [f"simulated: {r}" for r in sm["rows"]],
                      tr["cols"], tr["counts"] + sm["counts"], "Routing: true group vs stage that answered",
                      xlabel="stage that answered", ylabel="true group of the image")
    names = ["accuracy_per_domain.png", "routing.png"]
    if curves:
        plot.line_plot(os.path.join(out, "mixing_weight.png"),
                       {n: ([w for w, _ in c], [100 * a for _, a in c]) for n, c in curves.items()},
                       "Cascade top-1 vs backbone mixing weight", mix_label, "top-1 (%)")
        names.append("mixing_weight.png")
    return names


def sweep_plots(out: str, trials: Sequence[Mapping], first_model: str) -> List[str]:
    """mixing_weight.png, templates.png and inmap.png in ``out`` for the
    sweep steps ``trials`` holds (rows of trials.csv); returns the names
    written.  ``first_model``: the model whose weight the mix axis shows."""
    by_group: Dict[str, list] = {}
    for r in trials:
        by_group.setdefault(r["step"], []).append(r)
    names = []
    mix_series = {}
    for mix in ("inmap_mix", "lpp_mix"):
        rs = by_group.get(mix, [])
        if rs:
            w = sorted({r[f"{mix}_w"]: r["top1"] for r in rs}.items())
            mix_series[f"{'InMaP' if mix == 'inmap_mix' else 'LP++'} mix"] = (
                [x for x, _ in w], [100 * y for _, y in w])
    if mix_series:
        plot.line_plot(os.path.join(out, "mixing_weight.png"), mix_series,
                       "Simulated cascade top-1 vs mixing weight (sweep)",
                       f"weight of {first_model}", "top-1 (%)")
        names.append("mixing_weight.png")
    tmpl = {r["templates"]: r["top1"] for r in by_group.get("templates", [])}
    if tmpl:
        plot.bar_plot(os.path.join(out, "templates.png"), list(tmpl), [round(100 * v, 2) for v in tmpl.values()],
                      "Simulated cascade top-1 per template set", "top-1 (%)", xlabel="prompt template set")
        names.append("templates.png")
    inmap_rows = by_group.get("inmap", [])
    if inmap_rows:
        series: Dict[str, dict] = {}
        for r in inmap_rows:
            series.setdefault(f"tau_t {r['tau_t']:g}, tau_i {r['tau_i']:g}", {})[r["iters"]] = 100 * r["top1"]
        plot.line_plot(os.path.join(out, "inmap.png"),
                       {n: (sorted(v), [v[i] for i in sorted(v)]) for n, v in series.items()},
                       "Simulated cascade top-1 vs InMaP iterations", "InMaP iterations", "top-1 (%)")
        names.append("inmap.png")
    return names
