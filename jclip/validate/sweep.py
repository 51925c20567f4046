"""The sweep: tune the cascade on the simulated setup, write the best configuration.

Candidates are scored by the simulated cascade's top-1 over all measured images
(held-out validation images, never the test set; ties keep the earlier
candidate, the current setting first).  One group changes at a time, in this
order, keeping each best: templates, LP++ epochs, the seen stage's head, InMaP
(tau_t x tau_i x iterations; one InMaP run per temperature pair serves every
iteration count), the unseen stage's head (an InMaP start is the InMaP just
chosen), the InMaP mixing weight, the LP++ mixing weight.  The candidates are
the configuration's ``sweep`` section; a head group whose only candidate is the
configured head is not run.
"""
import dataclasses
import json
import os
import time
from typing import Dict, Optional

from ..io import atomic_write_text
from ..pipeline.backbones import step
from ..pipeline.config import Config, load_config
from ..pipeline.stages import StageHead
from ..progress import progress
from .metrics import accuracy
from .plots import sweep_plots
from .report import csv_text, md_table, pct, prepare, write_json
from .simulation import apply_params, held_out_names, params_of


def sweep_grid(cfg: Config) -> dict:
    """The candidates: the configuration's ``sweep`` section, as lists."""
    return {f.name: list(getattr(cfg.sweep, f.name)) for f in dataclasses.fields(cfg.sweep)}


def head_candidates(texts, current: StageHead):
    """The stage heads ``"HEAD"`` / ``"HEAD on INIT"`` as StageHeads; the configured
    head keeps its ``params``, any other runs with its defaults.  Empty when no
    candidate differs from ``current`` (nothing to compare)."""
    cands = []
    for text in texts:
        c = StageHead.parse(text)
        c = current if c[:2] == current[:2] else c
        if c not in cands:
            cands.append(c)
    return cands if any(c != current for c in cands) else []


def sweep(cfg, out: str, write: str, holdout: Optional[int] = None, seed: int = 1,
          per_class_limit: Optional[int] = None, features: Optional[Dict[str, str]] = None) -> dict:
    """Tune the cascade on the simulated setup; write ``out`` and the tuned
    configuration ``write``; returns the sweep's summary."""
    t0 = time.time()
    grid = sweep_grid(cfg)
    p0 = params_of(cfg)
    d, h, sim = prepare(cfg, holdout, seed, per_class_limit, templates=grid["templates"], features=features)
    iters_all = sorted({int(i) for i in grid["inmap_iters"]} | {p0["iters"]})
    trials = []

    def score(p, group):
        ids, _ = sim.run(p, all_iters=iters_all)
        a = accuracy(ids, d.eval.y)
        trials.append({"step": group, **flat(p), "top1": a["top1"], "top5": a["top5"], "n": a["n"]})
        return a["top1"]

    def best_of(group, candidates, best):
        """Try each candidate (the current one first); keep the highest top-1."""
        current = best
        best_score = score(current, group)
        for q in progress(candidates, desc=f"sweep {group}", unit="setting"):
            if q == current:
                continue
            s = score(q, group)
            if s > best_score:
                best, best_score = q, s
        print(f"    {group}: best {describe(best, group)}, top-1 {pct(best_score)}%", flush=True)
        return best

    p = p0
    with step("sweep", d.times):
        p = best_of("templates", [dict(p, templates=t) for t in grid["templates"]], p)
        p = best_of("lpp_epochs", [dict(p, lpp_epochs=int(e)) for e in grid["lpp_epochs"]], p)
        seen = head_candidates(grid["seen_heads"], p["seen"])
        if seen:
            p = best_of("seen_head", [dict(p, seen=c) for c in seen], p)
        p = best_of("inmap", [dict(p, tau_t=float(a), tau_i=float(b), iters=int(n))
                              for a in grid["inmap_tau_t"] for b in grid["inmap_tau_i"]
                              for n in grid["inmap_iters"]], p)
        unseen = head_candidates(grid["unseen_heads"], p["unseen"])
        if unseen:
            p = best_of("unseen_head", [dict(p, unseen=c) for c in unseen], p)
        for mix in ("inmap_mix", "lpp_mix"):
            keys = list(p[mix])
            if len(keys) != 2:
                print(f"    {mix}: not swept ({len(keys)} backbones; the sweep varies two)")
                continue
            p = best_of(mix, [dict(p, **{mix: {keys[0]: float(w), keys[1]: round(1.0 - float(w), 10)}})
                              for w in grid["mix_weights"]], p)

    best = max(r["top1"] for r in trials)
    if not any(r["top1"] == best and r == {**r, **flat(p)} for r in trials):
        raise RuntimeError("sweep: the chosen setting is not the best tried")   # cannot happen
    baseline = trials[0]
    tuned = apply_params(cfg, p).to_dict()
    tuned["_tuned"] = {"by": "python -m jclip.validate sweep", "from": cfg.path,
                       "val_list_sha256": d.val_sha256, "seed": h.seed,
                       "held_out_classes": held_out_names(d, h),
                       "images": len(d.eval_paths), "top1": best, "baseline_top1": baseline["top1"],
                       "trials": len(trials)}
    os.makedirs(out, exist_ok=True)
    fields = list(trials[0])
    atomic_write_text(os.path.join(out, "trials.csv"), csv_text(trials, fields))
    summary = {"config": cfg.path, "seed": h.seed, "images": len(d.eval_paths),
               "held_out_classes": tuned["_tuned"]["held_out_classes"], "grid": grid,
               "baseline": flat(p0), "baseline_top1": baseline["top1"],
               "chosen": flat(p), "chosen_top1": best, "trials": len(trials),
               "first_backbones": "/".join(list(p0[m])[0] for m in ("inmap_mix", "lpp_mix")),
               "retrain_needed": p["templates"] != p0["templates"] or p["lpp_epochs"] != p0["lpp_epochs"]
               or p["seen"] != p0["seen"],
               "written": os.path.abspath(write)}
    write_json(os.path.join(out, "sweep.json"), summary)
    plots = sweep_plots(out, trials, cfg.backbones[list(p0["lpp_mix"])[0]].model)
    atomic_write_text(os.path.join(out, "sweep.md"), sweep_markdown(summary, trials, plots, write))
    # read back as a configuration (its schema and the _tuned block) before it replaces ``write``
    atomic_write_text(write, json.dumps(tuned, indent=1) + "\n", check=load_config)
    write_json(os.path.join(out, "timings.json"), {"times_s": d.times, "total_s": round(time.time() - t0, 2)})
    print(f"sweep: {len(trials)} settings tried; top-1 {pct(baseline['top1'])}% -> {pct(best)}% "
          f"on {len(d.eval_paths)} validation images; wrote {write}")
    if summary["retrain_needed"]:
        print(f"next: bash train.sh --config {write} && bash test.sh --config {write}")
    else:
        print(f"next: bash test.sh --config {write}   (the trained heads still fit)")
    return summary


def flat(p):
    """A setting as one flat row (mixing weights as the first backbone's weight)."""
    return {"templates": p["templates"], "lpp_epochs": p["lpp_epochs"], "tau_t": p["tau_t"],
            "tau_i": p["tau_i"], "iters": p["iters"],
            "inmap_mix_w": list(p["inmap_mix"].values())[0], "lpp_mix_w": list(p["lpp_mix"].values())[0],
            "unseen_head": p["unseen"].describe(), "seen_head": p["seen"].describe()}


def describe(p, group):
    f = flat(p)
    return {"templates": f"templates={f['templates']}", "lpp_epochs": f"epochs={f['lpp_epochs']}",
            "inmap": f"tau_t={f['tau_t']:g} tau_i={f['tau_i']:g} iters={f['iters']}",
            "inmap_mix": f"InMaP {p['inmap_mix']}", "lpp_mix": f"LP++ {p['lpp_mix']}",
            "unseen_head": f"unseen head {f['unseen_head']}", "seen_head": f"seen head {f['seen_head']}"}[group]


def sweep_markdown(s, trials, plots, write):
    md = ["# Sweep on the validation split\n",
          f"{s['trials']} settings tried on {s['images']} held-out images, scored by the simulated "
          f"cascade's top-1 ({len(s['held_out_classes'])} seen classes held out as unseen, seed {s['seed']}). "
          "One group of settings changes at a time, keeping the best so far; a mixing weight "
          f"w is the first backbone's (`{s['first_backbones']}`), the other gets 1 - w. "
          "The score is measured on the same images the sweep tunes on, so it is optimistic; "
          "`val.sh report` with a different `--seed` (other held-out classes) is a fairer check.\n",
          md_table(["", "templates", "LP++ epochs", "tau_t", "tau_i", "iters", "InMaP mix w", "LP++ mix w",
                    "unseen head", "seen head", "top-1 %"],
                   [[name] + [v for k, v in p.items()] + [pct(t)] for name, p, t in
                    (("configuration", s["baseline"], s["baseline_top1"]),
                     ("chosen", s["chosen"], s["chosen_top1"]))]),
          f"Written: `{write}`. "
          + ("Templates, LP++ epochs or the seen head changed: run `train.sh` with it, then `test.sh`."
             if s["retrain_needed"] else "Only test-time settings changed: `test.sh --config` it."),
          ""]
    md += [f"![{p}]({p})\n" for p in plots]
    md.append("## Every setting tried\n")
    md.append(md_table(["step"] + list(trials[0])[1:-3] + ["top-1 %", "top-5 %"],
                       [[r["step"]] + [r[k] for k in list(r)[1:-3]] + [pct(r["top1"]), pct(r["top5"])]
                        for r in trials]))
    return "\n".join(md)

