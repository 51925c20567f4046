"""Every figure jclip writes (few-shot study, validation report, sweep), drawn
from miniature numbers of the shapes the real runs produce: the PNG read back
(size, ink, colours), the SVG beside it, and the labels a reader needs found
among matplotlib's own text objects."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jclip import plot
from jclip.fewshot.report import accuracy_figure, write_plot
from jclip.fewshot.study import LABELS
from jclip.validate.plots import report_plots, sweep_plots

pytest.importorskip("matplotlib")

SHOTS = (1, 2, 4, 8, 16)


def fewshot_rows(methods=("zeroshot", "linear_probe", "tip_adapter", "lpp"), seeds=(1, 2, 3)):
    """Rows as run_study returns them: one per (method, shots, seed)."""
    rng = np.random.default_rng(0)
    rows = []
    for m_i, method in enumerate(methods):
        for s in SHOTS:
            for seed in seeds:
                top1 = 40 + 5 * m_i + 8 * math.log2(s) + rng.normal(0, 1.5)
                rows.append({"method": method, "shots": s, "seed": seed, "top1": top1,
                             "top5": min(100.0, top1 + 20), "seconds": 0.1})
    return rows


def measured(rows, cols=("InMaP", "LP++", "dog head"), counts=None, held=None):
    acc = lambda v: {"top1": v, "top5": v, "n": 10}   # noqa: E731
    return {"per_domain": {"Animal": acc(0.9), "Caltech-101": acc(0.85), "Food-101": acc(0.7),
                           "Thu-dog": acc(0.6), "Stanford-Cars": acc(0.4)},
            "per_group": {"held-out": acc(held)},
            "routing": {"rows": list(rows), "cols": list(cols), "counts": counts}}


TRAINED = measured(("not-dog", "dog"), counts=[[0, 40, 2], [0, 3, 15]])
SIMULATED = measured(("seen not-dog", "seen dog", "held-out"), counts=[[1, 38, 3], [0, 4, 14], [9, 1, 0]],
                     held=0.55)
CURVES = {name: [(w, 0.5 + 0.3 * w - 0.25 * w * w + d) for w in np.linspace(0, 1, 11)]
          for name, d in (("InMaP mix (simulated)", 0.0), ("LP++ mix (simulated)", 0.05),
                          ("LP++ mix (trained)", 0.08))}


def sweep_trials():
    rows = [{"step": "templates", "templates": t, "top1": v}
            for t, v in (("imagenet7", 0.61), ("single", 0.55), ("descriptions", 0.63))]
    for a in (0.01, 0.02):
        for n in (500, 1000, 2000):
            rows.append({"step": "inmap", "tau_t": a, "tau_i": 0.04, "iters": n, "top1": 0.5 + a + n / 1e5})
    for mix in ("inmap_mix", "lpp_mix"):        # the same curve twice: both must stay visible
        for w in np.linspace(0, 1, 11):
            rows.append({"step": mix, f"{mix}_w": round(float(w), 1), "top1": 0.5 + 0.2 * w * (1 - w)})
    return rows


def assert_png(path, min_colours=8):
    """A real PNG of a sensible size with ink on it, and its SVG beside it."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.load()
        assert im.width >= 400 and im.height >= 200, im.size
        px = np.asarray(im.convert("RGB")).reshape(-1, 3)
    dark = (px.sum(axis=1) < 200).mean()
    assert 0.002 < dark < 0.5, dark                                     # text and lines, not a blank or a blot
    assert len(np.unique(px, axis=0)) >= min_colours                    # colours, antialiasing: drawn
    svg = plot.svg_path(path)
    with open(svg, "rb") as f:
        assert b"<svg" in f.read(), svg
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".tmp-")]


def captured_figures(monkeypatch):
    """Every figure saved through plot.save_figure from now on: {file name: Figure}."""
    figs = {}
    real = plot.save_figure

    def keep(fig, path):
        figs[os.path.basename(os.fspath(path))] = fig
        return real(fig, path)
    monkeypatch.setattr(plot, "save_figure", keep)
    return figs


# ---------------------------------------------------------------- few-shot

def test_fewshot_accuracy_plot_has_error_bars_log_shots_and_a_legend(tmp_path):
    rows = fewshot_rows()
    path = write_plot(str(tmp_path / "accuracy.png"), rows, "tiny-vit: few-shot accuracy")
    assert_png(path)
    fig = accuracy_figure(rows, "tiny-vit: few-shot accuracy")
    ax = fig.axes[0]
    texts = plot.figure_texts(fig)
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "shots per class (log scale)"
    assert ax.get_ylabel() == "top-1 accuracy (%), mean ± std over 3 seeds"
    assert ax.get_title() == "tiny-vit: few-shot accuracy"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8", "16"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [LABELS[m] for m in ("zeroshot", "linear_probe", "tip_adapter", "lpp")]
    assert set(labels) <= set(texts)
    # error bars: one vertical segment per point, as long as 2 std over the seeds
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    assert len(bars) == 4
    segs = bars[1].get_segments()
    lp = [r["top1"] for r in rows if r["method"] == "linear_probe" and r["shots"] == 4]
    assert any(abs((s[1][1] - s[0][1]) - 2 * np.std(lp)) < 1e-9 for s in segs)


def test_fewshot_plot_of_one_seed_and_base_to_new(tmp_path):
    rows = [dict(r, H=r.pop("top1"), base_top1=1.0, new_top1=2.0) for r in fewshot_rows(seeds=(1,))]
    for r in rows:
        del r["top5"]
    fig = accuracy_figure(rows)
    assert fig.axes[0].get_ylabel() == "harmonic mean of base/new top-1 (%)"
    assert_png(write_plot(str(tmp_path / "accuracy.png"), rows))


# ---------------------------------------------------------------- validation report, sweep

def test_report_plots(tmp_path, monkeypatch):
    figs = captured_figures(monkeypatch)
    names = report_plots(str(tmp_path), TRAINED, SIMULATED, CURVES, "weight of ViT-B/32 (the other gets 1 - w)")
    assert names == ["accuracy_per_domain.png", "routing.png", "mixing_weight.png"] == list(figs)
    for n in names:
        assert_png(str(tmp_path / n))
    bars = figs["accuracy_per_domain.png"]
    texts = plot.figure_texts(bars)
    for s in ("Animal", "Stanford-Cars", "held-out (sim.)", "top-1 (%)", "domain", "90", "55"):
        assert s in texts, (s, texts)
    routing = plot.figure_texts(figs["routing.png"])
    for s in ("trained: not-dog", "simulated: held-out", "InMaP", "dog head", "stage that answered",
              "true group of the image", "40 (95%)", "9 (90%)", "0 (0%)"):
        assert s in routing, (s, routing)
    assert figs["routing.png"].axes[-1].get_ylabel() == "share of the row"     # the colour bar
    mix = plot.figure_texts(figs["mixing_weight.png"])
    for s in ("LP++ mix (trained)", "weight of ViT-B/32 (the other gets 1 - w)", "top-1 (%)"):
        assert s in mix


def test_report_plots_without_held_out_result_or_curves(tmp_path, monkeypatch):
    figs = captured_figures(monkeypatch)
    simulated = dict(SIMULATED, per_group={"held-out": {"top1": None}})
    assert report_plots(str(tmp_path), TRAINED, simulated, {}, "") == ["accuracy_per_domain.png", "routing.png"]
    assert "n/a" in plot.figure_texts(figs["accuracy_per_domain.png"])    # no bar drawn at zero
    assert_png(str(tmp_path / "accuracy_per_domain.png"))


def test_sweep_plots(tmp_path, monkeypatch):
    figs = captured_figures(monkeypatch)
    names = sweep_plots(str(tmp_path), sweep_trials(), "tiny-vit")
    assert names == ["mixing_weight.png", "templates.png", "inmap.png"] == list(figs)
    for n in names:
        assert_png(str(tmp_path / n))
    assert {"InMaP mix", "LP++ mix", "weight of tiny-vit"} <= set(plot.figure_texts(figs["mixing_weight.png"]))
    lines = figs["mixing_weight.png"].axes[0].get_lines()
    assert len({(l.get_marker(), l.get_linestyle()) for l in lines}) == 2     # coinciding lines differ in style
    assert {"imagenet7", "descriptions", "63", "prompt template set"} <= set(plot.figure_texts(figs["templates.png"]))
    inmap = plot.figure_texts(figs["inmap.png"])
    assert {"tau_t 0.01, tau_i 0.04", "tau_t 0.02, tau_i 0.04", "InMaP iterations", "500", "2000"} <= set(inmap)
    assert sweep_plots(str(tmp_path / "none"), [], "x") == []


# ---------------------------------------------------------------- the primitives

def test_missing_values_break_the_line_and_log_axis_drops_nonpositive(tmp_path):
    fig = plot.line_figure({"a": ([1, 5, 16], [10, float("nan"), 30]), "b": ([0, 5, 16], [5, 6, 7])},
                           "t", "x", "y", log_x=True)
    lines = fig.axes[0].get_lines()
    assert np.isnan(lines[0].get_ydata()[1]) and list(lines[1].get_xdata()) == [5, 16]
    assert_png(plot.line_plot(tmp_path / "l.png", {"a": ([1, 5, 16], [10, float("nan"), 30])}, "t", "x", "y"))
    with pytest.raises(ValueError, match="no series"):
        plot.line_plot(tmp_path / "e.png", {})
    with pytest.raises(ValueError, match="3 x values, 2 y values"):
        plot.line_figure({"a": ([1, 2, 3], [1, 2])})


def test_bar_and_heatmap_refuse_mismatched_input(tmp_path):
    assert_png(plot.bar_plot(tmp_path / "b.png", ["x", "y"], [1.5, -0.5], "t", "s", errors=[0.1, 0.2]))
    with pytest.raises(ValueError, match="as many values as labels"):
        plot.bar_plot(tmp_path / "c.png", ["x"], [1, 2])
    with pytest.raises(ValueError, match="len\\(row_labels\\) x len\\(col_labels\\)"):
        plot.heatmap_plot(tmp_path / "h.png", ["a"], ["b", "c"], [[1]])
    assert not os.path.exists(tmp_path / "c.png") and not os.path.exists(tmp_path / "h.png")


def test_svg_is_reproducible(tmp_path):
    for name in ("a.png", "b.png"):
        plot.bar_plot(tmp_path / name, ["x", "y"], [1.0, 2.0], "t", "s")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_plotting_leaves_pyplot_alone_and_jclip_import_does_not_load_matplotlib(tmp_path):
    code = ("import sys, jclip, jclip.plot, jclip.fewshot.report, jclip.validate.plots; "
            "assert 'matplotlib' not in sys.modules, 'imported on import'; "
            "jclip.plot.bar_plot(sys.argv[1], ['a'], [1.0]); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.png")], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, MPLBACKEND="tkagg"))
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
