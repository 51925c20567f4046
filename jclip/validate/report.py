"""The validation report: both setups measured on the held-out images, written
as ``summary.json``, ``per_class.csv``, ``predictions.csv``, ``report.md`` and
plots (times in ``timings.json`` only: every other file is a pure function of
the configuration, the lists and the seed).
"""
import csv
import io
import json
import os
import sys
import time
from typing import Dict, Optional


from ..io import atomic_write_text
from ..pipeline.backbones import step
from ..pipeline.heads import check_seen
from .data import encode, read_lists
from .plots import report_plots
from .metrics import (accuracy, answered, argmax_accuracy, config_warnings, measure, per_class_rows,
                      routing_errors)
from .simulation import Simulated, choose_holdout, held_out_names, params_of, trained_cascade


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------

def csv_text(rows, fields):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return buf.getvalue()


def pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}"


def md_table(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]) + "\n"


def acc_rows(table):
    return [(name, a["n"], pct(a["top1"]), pct(a["top5"])) for name, a in table.items()]


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")



def mix_curve(run, p, which, weights):
    """[(w, top-1)] with ``which`` mix = {first backbone: w, second: 1 - w}."""
    keys = list(p[which])
    curve = []
    for w in weights:
        q = dict(p, **{which: {keys[0]: float(w), keys[1]: round(1.0 - float(w), 10)}})
        curve.append((float(w), run(q)))
    return curve


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def prepare(cfg, holdout: Optional[int], seed: int, per_class_limit: Optional[int], templates=(),
            features: Optional[Dict[str, str]] = None, trained_seen: bool = False):
    """(ValData, Holdout, Simulated): lists read and checked, held-out classes drawn
    (both before any model is loaded), features encoded, the dog head's answers
    for the dog images computed once.  ``trained_seen``: the configuration's
    seen head must be the one train.sh trained (the report measures it; the
    sweep fits its own candidates), checked before any model is loaded too."""
    lists = read_lists(cfg, per_class_limit)
    if trained_seen:
        for key in cfg.cascade.lpp_mix:
            check_seen(cfg, lists.manifest, key)
    h = choose_holdout(lists, holdout, seed)
    d = encode(lists, templates, note=f"; {len(h.classes)} classes held out as unseen (seed {h.seed})",
               features=features)
    with step("dog head on the validation dog images", d.times):
        d.dog_head.topk([a for a, y in zip(d.eval_abs, d.eval.y) if d.dog_truth[y]])
    return d, h, Simulated(d, h)


def report(cfg, out: str, holdout: Optional[int] = None, seed: int = 1,
           per_class_limit: Optional[int] = None, features: Optional[Dict[str, str]] = None) -> dict:
    """Measure both setups and write the report into ``out``; returns the summary."""
    t0 = time.time()
    d, h, sim = prepare(cfg, holdout, seed, per_class_limit, features=features, trained_seen=True)
    p = params_of(cfg)
    casc = cfg.cascade
    x, y = d.eval.x, d.eval.y

    def run(cascade):
        pred = cascade.predict(x, d.eval_abs)
        return pred.ids, answered(pred.stage)

    with step("trained cascade", d.times):
        trained_c = trained_cascade(d)
        ids_t, stage_t = run(trained_c)
        trained = measure(d, ids_t, stage_t)
    with step(f"simulated unseen: {len(h.classes)} held-out classes", d.times):
        ids_s, stage_s = sim.run(p)
        simulated = measure(d, ids_s, stage_s, h.held)

    with step("backbones alone vs mixed", d.times):
        def solo(mix, key):
            return {key: 1.0} if key in mix else mix    # a backbone a stage does not use: as configured

        def columns(inmap_mix, lpp_mix):
            c = trained_c.replace(inmap_mix=inmap_mix, lpp_mix=lpp_mix)
            sids, _ = sim.run(dict(p, inmap_mix=inmap_mix, lpp_mix=lpp_mix))
            return {"LP++ alone (trained, seen classes)": argmax_accuracy(c.lpp_logits(x), y),
                    "InMaP on held-out images (simulated)": held_out_top1(d, h, sim, p, inmap_mix),
                    "cascade, trained": accuracy(run(c)[0], y)["top1"],
                    "cascade, simulated": accuracy(sids, y)["top1"]}
        alone = {cfg.backbones[key].model: columns(solo(casc.inmap_mix, key), solo(casc.lpp_mix, key))
                 for key in d.backbones}
        alone["mixed"] = columns(dict(casc.inmap_mix), dict(casc.lpp_mix))

    curves = {}
    if len(d.backbones) == 2 and all(len(p[m]) == 2 for m in ("inmap_mix", "lpp_mix")):
        with step("accuracy vs mixing weight", d.times):
            weights = cfg.sweep.mix_weights
            top1 = lambda q: accuracy(sim.run(q)[0], y)["top1"]  # noqa: E731
            curves["InMaP mix (simulated)"] = mix_curve(top1, p, "inmap_mix", weights)
            curves["LP++ mix (simulated)"] = mix_curve(top1, p, "lpp_mix", weights)
            keys = list(casc.lpp_mix)
            trained_top1 = lambda q: accuracy(run(trained_c.replace(lpp_mix=q["lpp_mix"]))[0], y)["top1"]  # noqa: E731
            curves["LP++ mix (trained)"] = mix_curve(trained_top1, p, "lpp_mix", weights)
            mix_label = f"weight of {cfg.backbones[keys[0]].model} (the other gets 1 - w)"

    rows = per_class_rows(d, ids_t, "trained") + per_class_rows(d, ids_s, "simulated", h.held)
    summary = {
        "config": cfg.path, "val_list_sha256": d.val_sha256, "seed": h.seed,
        "images": len(d.eval_paths), "unreadable": d.unreadable,
        "held_out_classes": held_out_names(d, h), "holdout_note": h.note,
        "test_classes": len(d.test_names) if d.test_names else None,
        "trained": trained, "simulated": simulated, "backbones": alone,
        "mix_curves": {name: [[w, a] for w, a in c] for name, c in curves.items()},
        "routing_errors": {"trained": routing_errors(trained, False),
                           "simulated": routing_errors(simulated, True)},
        "warnings": config_warnings(d),
    }
    os.makedirs(out, exist_ok=True)
    with step(f"write {out}", d.times):
        write_json(os.path.join(out, "summary.json"), summary)
        atomic_write_text(os.path.join(out, "per_class.csv"), csv_text(rows, list(rows[0])))
        preds = [{"setup": s, "path": path, "label": int(label), "stage": st, "top5": " ".join(map(str, ids))}
                 for s, I, S in (("trained", ids_t, stage_t), ("simulated", ids_s, stage_s))
                 for path, label, ids, st in zip(d.eval_paths, y, I, S)]
        atomic_write_text(os.path.join(out, "predictions.csv"),
                          csv_text(preds, ["setup", "path", "label", "stage", "top5"]))
        plots = report_plots(out, trained, simulated, curves, mix_label if curves else "")
        atomic_write_text(os.path.join(out, "report.md"), report_markdown(d, summary, rows, plots))
    write_json(os.path.join(out, "timings.json"), {"times_s": d.times, "total_s": round(time.time() - t0, 2)})
    print(f"trained cascade top-1 {pct(trained['overall']['top1'])}%, simulated "
          f"{pct(simulated['overall']['top1'])}% on {len(d.eval_paths)} images; "
          f"wrote {os.path.join(out, 'report.md')}")
    for w in summary["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return summary


def held_out_top1(d, h, sim, p, mix):
    """InMaP's top-1 on the held-out classes' images (simulated setup)."""
    m = h.held[d.eval.y]
    if not m.any():
        return None
    logits = sim.cascade(p).replace(inmap_mix=mix).inmap_logits(d.eval.x)
    return argmax_accuracy(logits[m], d.eval.y[m])


def report_markdown(d, s, rows, plots):
    t, sm = s["trained"], s["simulated"]
    md = ["# Validation report\n",
          f"Configuration `{s['config']}`; validation list SHA-256 `{s['val_list_sha256'][:16]}...`; "
          f"seed {s['seed']}. **{s['images']} held-out images** (never shots, never used to choose "
          f"an epoch)" + (f"; {len(s['unreadable'])} unreadable, left out" if s["unreadable"] else "") + ".\n",
          "- **trained**: the heads in `out/`, run as test.sh runs them"
          + (f" (InMaP over the {s['test_classes']} test classes)" if s["test_classes"] else
             " (no test class list: InMaP over the seen classes only)") + ".",
          f"- **simulated**: {len(s['held_out_classes'])} seen classes held out as unseen "
          f"(LP++ refit without them, InMaP over the seen classes): "
          + ", ".join(f"`{n}`" for n in s["held_out_classes"][:12])
          + (" ..." if len(s["held_out_classes"]) > 12 else "") + ".\n"]
    if s["holdout_note"]:
        md.append(f"Note: {s['holdout_note']}.\n")
    if s["warnings"]:
        md.append("## Warnings\n")
        md += [f"- **{w}**" for w in s["warnings"]]
        md.append("")
    md.append("## Summary\n")
    md.append(md_table(["setup", "images", "top-1 %", "top-5 %"],
                       acc_rows({"trained": t["overall"], "simulated": sm["overall"]})))
    md.append("## Per domain\n")
    md.append(md_table(["domain", "images", "top-1 % (trained)", "top-5 % (trained)", "top-1 % (simulated)"],
                       [(dom, a["n"], pct(a["top1"]), pct(a["top5"]), pct(sm["per_domain"][dom]["top1"]))
                        for dom, a in t["per_domain"].items()]))
    md.append("![accuracy per domain](accuracy_per_domain.png)\n")
    md.append("## Per stage (the stage that answered)\n")
    md.append("Trained:\n\n" + md_table(["stage", "images", "top-1 %", "top-5 %"], acc_rows(t["per_stage"])))
    md.append("Simulated:\n\n" + md_table(["stage", "images", "top-1 %", "top-5 %"], acc_rows(sm["per_stage"])))
    md.append("Simulated, per true group:\n\n" + md_table(["group", "images", "top-1 %", "top-5 %"],
                                                         acc_rows(sm["per_group"])))
    md.append("## Routing\n")
    for name, r in (("trained", t["routing"]), ("simulated", sm["routing"])):
        md.append(f"{name.capitalize()} (rows: true group; columns: the stage that answered):\n")
        md.append(md_table(["true group"] + r["cols"], [[g] + c for g, c in zip(r["rows"], r["counts"])]))
        errs = s["routing_errors"][name]
        md += [f"- {e}" for e in errs]
        md.append("")
    md.append("![routing](routing.png)\n")
    md.append("## Backbones alone vs mixed (top-1 %)\n")
    cols = list(next(iter(s["backbones"].values())))
    md.append(md_table(["backbone"] + cols,
                       [[b] + [pct(v[c]) for c in cols] for b, v in s["backbones"].items()]))
    if "mixing_weight.png" in plots:
        md.append("![accuracy vs mixing weight](mixing_weight.png)\n")
        md.append(md_table(["weight"] + list(s["mix_curves"]),
                           [[w] + [pct(c[i][1]) for c in s["mix_curves"].values()]
                            for i, (w, _) in enumerate(next(iter(s["mix_curves"].values())))]))
    md.append("## Lowest-accuracy classes (trained)\n")
    worst = sorted((r for r in rows if r["setup"] == "trained" and r["top1"] < 1),
                   key=lambda r: (r["top1"], r["class"]))[:10]
    md.append(md_table(["class", "images", "top-1 %", "top-5 %", "most often taken for"],
                       [(r["name"], r["n"], pct(r["top1"]), pct(r["top5"]), r["most_confused_with"])
                        for r in worst]))
    md.append("Raw numbers: `summary.json`, `per_class.csv`, `predictions.csv`.\n")
    return "\n".join(md)

