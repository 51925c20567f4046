"""Measure the cascade's stages on held-out training images, and tune it.

    python -m jclip.validate report [--config FILE] [--set KEY=VALUE] [--out out/val_report]
    python -m jclip.validate sweep  [--config FILE] [--set KEY=VALUE] [--out out/val_sweep]
                                    [--write out/tuned.json]
    (bash val.sh report|sweep ... runs the same)

Images: process.py's ``val.txt`` minus the images train.sh used to choose its
epochs (the first ``lpp.val_per_class`` of every class and
``dog_head.val_per_class`` of every dog class) and minus any 4-shot image.
No test image is read.

Two setups are measured:

trained    the heads train.sh wrote, run as test.sh runs them: InMaP over the
           test class list (unseen classes included) fitted on the validation
           images, LP++ from out/, the dog head from out/.  Every validation
           image is of a seen class, so an image sent to InMaP is a routing error.
simulated  unseen classes have no labelled images, so a seeded subset of the
           non-dog seen classes is held out: LP++ is refit on the 4-shot images
           of the other classes, InMaP runs over all seen classes, and InMaP
           answers when its top-1 is a held-out class.  This measures routing
           in both directions and InMaP on classes it never saw labelled.

The sweep scores candidate settings on the simulated setup (top-1 over all
validation images; ties keep the earlier candidate, the current setting
first).  It changes one group at a time, in this order, keeping each best:
templates, LP++ epochs, InMaP (tau_t x tau_i x iterations), the InMaP mixing
weight, the LP++ mixing weight.  The candidates are the configuration's
``sweep`` section.  It writes the best configuration for train.sh/test.sh.
Every number is a pure function of the configuration, the lists and the seed:
a re-run writes the same files (times go to ``timings.json`` only).
"""
import argparse
import copy
import csv
import io
import json
import os
import sys
import time

import numpy as np

from ..pipeline.cascade import DEFAULT_CONFIG, check_trained_with, class_masks, data_path, dog_topk, encode_backbones, inmap_head, inmap_logits, load_config, load_dog_head, lpp_logits, mixed, per_class, read_manifest, route, step
from ..data.contest import ContestFormatError, domain_of, read_classes, read_labelled_list
from ..io import atomic_write_text, sha256_file

DEFAULT_SWEEP = {
    "templates": ["imagenet7", "single", "imagenet80"],
    "lpp_epochs": [100, 300, 500],
    "inmap_tau_t": [0.01, 0.02],
    "inmap_tau_i": [0.02, 0.04],
    "inmap_iters": [500, 1000, 2000],
    "mix_weights": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
}
STAGES = ("inmap", "lpp", "dog")
STAGE_NAMES = {"inmap": "InMaP", "lpp": "LP++", "dog": "dog head"}


# --------------------------------------------------------------------------
# Data: the held-out images, the simulated unseen classes, the features
# --------------------------------------------------------------------------

class ValData:
    """Everything both setups read: lists, classes, features, text weights."""


def dog_domain(cfg, names):
    """The domain whose classes the dog head should answer: ``cascade.dog_domain``,
    else the domain of most classes in ``cascade.dog_range``."""
    casc = cfg["cascade"]
    if casc.get("dog_domain"):
        if casc["dog_domain"] not in {domain_of(n) for n in names}:
            raise ContestFormatError(f"{cfg['_path']}: cascade.dog_domain {casc['dog_domain']!r} "
                                     f"is not a domain of the class list")
        return casc["dog_domain"]
    lo, hi = (int(v) for v in casc["dog_range"])
    inside = [domain_of(n) for n in names[lo:hi + 1]]
    return max(dict.fromkeys(inside), key=inside.count) if inside else None


def holdout_classes(num_classes, dog, count, seed):
    """A seeded, sorted subset of ``count`` class ids outside the ``dog`` mask."""
    candidates = np.flatnonzero(~dog)
    if not 1 <= count <= len(candidates) - 1:
        raise ContestFormatError(f"--holdout {count}: need 1..{len(candidates) - 1} "
                                 f"(there are {len(candidates)} non-dog seen classes)")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, count, replace=False))


def selection_images(cfg, val, dog):
    """The validation images train.sh used to choose epochs."""
    lpp = per_class(val, int(cfg["lpp"]["val_per_class"]))
    dogs = [(p, y) for p, y in per_class(val, int(cfg["dog_head"]["val_per_class"])) if dog[y]]
    return lpp, dogs


def load_data(cfg, holdout=None, seed=1, per_class_limit=None, templates=None):
    import jclip  # noqa: F401  (Jittor defaults before jittor)
    from ..models.load import use_device
    d = ValData()
    d.cfg, d.times = cfg, {}
    casc = cfg["cascade"]
    d.k = int(casc["topk"])
    d.root = cfg["data"]["root"]
    d.names = read_classes(data_path(cfg, "classes"))
    test_classes = data_path(cfg, "test_classes")
    d.test_names = read_classes(test_classes) if os.path.isfile(test_classes) else None
    if d.test_names is not None and d.test_names[:len(d.names)] != d.names:
        raise ContestFormatError(f"{test_classes}: its first {len(d.names)} classes must be "
                                 f"those of {data_path(cfg, 'classes')}, in order")
    d.manifest = read_manifest(cfg)
    check_trained_with(cfg, d.manifest)
    lists = cfg["data"]["lists"]
    shots_path, val_path = os.path.join(lists, "train_4shot.txt"), os.path.join(lists, "val.txt")
    shots = read_labelled_list(shots_path, len(d.names))
    if sha256_file(shots_path) != d.manifest["train_4shot"]["sha256"]:
        raise ContestFormatError(f"{shots_path}: not the 4-shot list the heads in "
                                 f"{cfg['out_dir']} were trained on; run train.sh again")
    if not os.path.isfile(val_path):
        raise ContestFormatError(f"{val_path}: no validation list; run process.py with "
                                 f"--val-per-class > 0")
    val = read_labelled_list(val_path, len(d.names))
    d.val_sha256 = sha256_file(val_path)
    # d.dog: the classes the configuration routes to the dog head;
    # d.dog_truth: the classes of the dog domain (what the routing should match)
    _, d.dog = class_masks(len(d.names), len(d.names), len(d.names), casc["dog_range"])
    d.dog_domain = dog_domain(cfg, d.names)
    d.dog_truth = np.array([domain_of(n) == d.dog_domain for n in d.names])
    lpp_sel, dog_sel = selection_images(cfg, val, d.dog)
    used = {p for p, _ in shots + lpp_sel + dog_sel}
    items = [(p, y) for p, y in val if p not in used]
    if per_class_limit:
        items = per_class(items, int(per_class_limit))
    if not items:
        raise ContestFormatError(
            f"{val_path}: no validation image left after the {len(used)} that train.sh used "
            f"(shots and epoch selection); run process.py with a larger --val-per-class")
    # simulated unseen classes
    n_unseen = len(d.test_names) - len(d.names) if d.test_names else 29
    d.holdout_note = None
    candidates = ~d.dog_truth & ~d.dog
    if holdout is None:
        holdout = min(max(n_unseen, 1), max(1, int(candidates.sum()) // 2))
        if holdout != n_unseen:
            d.holdout_note = (f"{holdout} classes held out (half of the {int(candidates.sum())} "
                              f"non-dog classes; the test set has {n_unseen} unseen)")
    d.seed = int(seed)
    d.holdout = holdout_classes(len(d.names), ~candidates, int(holdout), d.seed)
    d.held = np.zeros(len(d.names), bool)
    d.held[d.holdout] = True

    # features: shots, LP++ selection, evaluation images, each once per backbone
    d.backbones = sorted(set(casc["inmap_mix"]) | set(casc["lpp_mix"]))
    d.template_sets = list(dict.fromkeys([cfg["templates"]] + list(templates or [])))
    name_lists = [d.names] + ([d.test_names] if d.test_names else [])
    everything = shots + lpp_sel + items
    # shots + selection: the very list train.sh encoded, so the feature cache has it
    groups = [[os.path.join(d.root, p) for p, _ in part] for part in (shots + lpp_sel, items)]
    device = use_device(cfg["device"])
    print(f"validation: {len(items)} images of {len({y for _, y in items})} classes "
          f"({len(val)} in {val_path}, {len(used & {p for p, _ in val})} used by train.sh); "
          f"{len(d.holdout)} classes held out as unseen (seed {d.seed}); device {device}", flush=True)
    feats, good, texts = encode_backbones(cfg, d.backbones, groups, device, name_lists,
                                          d.manifest, d.times, d.template_sets)
    n_s, n_l = len(shots), len(lpp_sel)
    parts = {"shots": slice(0, n_s), "sel": slice(n_s, n_s + n_l), "eval": slice(n_s + n_l, None)}
    labels = np.array([y for _, y in everything], np.int64)
    d.unreadable = [p for (p, _), ok in zip(items, good[parts["eval"]]) if not ok]
    for name, part in parts.items():
        keep = good[part]
        setattr(d, f"y_{name}", labels[part][keep])
        setattr(d, f"x_{name}", {key: feats[key][part][keep] for key in d.backbones})
    d.eval_paths = [p for (p, _), ok in zip(items, good[parts["eval"]]) if ok]
    d.eval_abs = [os.path.join(d.root, p) for p in d.eval_paths]
    if not d.eval_paths:
        raise ContestFormatError(f"{val_path}: no readable validation image")
    # texts[key][i]: name list i // len(sets), template set i % len(sets)
    n_sets = len(d.template_sets)
    d.text_seen = {key: dict(zip(d.template_sets, texts[key][:n_sets])) for key in d.backbones}
    d.text_test = {key: texts[key][n_sets] for key in d.backbones} if d.test_names else None
    d.dog_answers = DogAnswers(cfg, d.manifest, d.k)
    return d


class DogAnswers:
    """The trained dog head's top-k per image path, computed once per image,
    in batches, as the routing asks for them."""

    def __init__(self, cfg, manifest, k):
        self.cfg, self.manifest, self.k = cfg, manifest, k
        self.model, self.known = None, {}

    def get(self, paths):
        missing = [p for p in dict.fromkeys(paths) if p not in self.known]
        if missing:
            if self.model is None:
                self.model = load_dog_head(self.cfg, self.manifest)
            got = dog_topk(self.cfg, self.model, missing, self.k, verbose=len(missing) > 64)
            for p in missing:
                self.known[p] = got.get(p)      # None: ConvNeXt could not read it
        return [self.known[p] for p in paths]


def run_cascade(mix_i, mix_l, unseen, dog, k, paths, dog_answers):
    """(ids (N, k), stage (N,)) as test.sh decides them."""
    ids, stage = route(mix_i, mix_l, unseen, dog, k)
    rows = np.flatnonzero(stage == "dog")
    for i, answer in zip(rows, dog_answers.get([paths[i] for i in rows])):
        if answer is None:
            stage[i] = "lpp"        # test.sh's lpp-fallback: LP++'s answer stands
        else:
            ids[i] = answer
    return ids, stage.astype(str)


# --------------------------------------------------------------------------
# The two setups
# --------------------------------------------------------------------------

def params_of(cfg):
    """The cascade's free choices, as the sweep varies them."""
    i = cfg["inmap"]
    return {"templates": cfg["templates"], "lpp_epochs": int(cfg["lpp"]["epochs"]),
            "tau_t": float(i["tau_t"]), "tau_i": float(i["tau_i"]), "iters": int(i["iters"]),
            "inmap_mix": dict(cfg["cascade"]["inmap_mix"]), "lpp_mix": dict(cfg["cascade"]["lpp_mix"])}


def apply_params(cfg, p):
    """A copy of ``cfg`` with the sweep's choices ``p``."""
    cfg = copy.deepcopy({k: v for k, v in cfg.items() if k != "_path"})
    cfg["templates"] = p["templates"]
    cfg["lpp"]["epochs"] = int(p["lpp_epochs"])
    cfg["inmap"].update(tau_t=p["tau_t"], tau_i=p["tau_i"], iters=int(p["iters"]))
    cfg["cascade"]["inmap_mix"] = dict(p["inmap_mix"])
    cfg["cascade"]["lpp_mix"] = dict(p["lpp_mix"])
    return cfg


class Simulated:
    """The cascade with d.holdout playing the unseen classes; heads memoised
    per setting so a sweep fits each LP++ / InMaP once."""

    def __init__(self, d):
        self.d = d
        self.kept = np.flatnonzero(~d.held)
        self._lpp, self._inmap = {}, {}
        self.unseen, self.dog = d.held, d.dog

    def lpp(self, key, templates, epochs):
        """(N, C_seen) LP++ logits; held-out classes -inf (LP++ never saw them)."""
        memo = (key, templates, int(epochs))
        if memo not in self._lpp:
            from ..heads import LPPlusPlus
            d, lcfg = self.d, self.d.cfg["lpp"]
            remap = np.full(len(d.names), -1)
            remap[self.kept] = np.arange(len(self.kept))
            tr, sel = ~d.held[d.y_shots], ~d.held[d.y_sel]
            head = LPPlusPlus(epochs=epochs, momentum=lcfg["momentum"], alpha_every=lcfg["alpha_every"],
                              alpha_scale=lcfg["alpha_scale"], seed=lcfg["seed"])
            vx = d.x_sel[key][sel] if sel.any() else None
            head.fit(d.x_shots[key][tr], remap[d.y_shots[tr]], d.text_seen[key][templates][self.kept],
                     vx, remap[d.y_sel[sel]] if vx is not None else None)
            out = np.full((len(d.eval_paths), len(d.names)), -np.inf)
            out[:, self.kept] = head.logits(d.x_eval[key])
            self._lpp[memo] = out
        return self._lpp[memo]

    def inmap(self, key, templates, tau_t, tau_i, iters, all_iters=()):
        """(N, C_seen) InMaP logits; one fit serves every count in ``all_iters``."""
        memo = (key, templates, float(tau_t), float(tau_i))
        got = self._inmap.setdefault(memo, {})
        if int(iters) not in got:
            d = self.d
            icfg = dict(d.cfg["inmap"], tau_t=tau_t, tau_i=tau_i,
                        iters=max([int(iters)] + [int(i) for i in all_iters]))
            snaps = sorted({int(iters)} | {int(i) for i in all_iters})
            head = inmap_head(icfg).fit(d.x_eval[key], d.text_seen[key][templates], snapshots=snaps,
                                        progress=True)
            for n, proxies in head.snapshots_.items():
                got[n] = (d.x_eval[key] @ proxies.T) / head.tau_i
        return got[int(iters)]

    def run(self, p, all_iters=()):
        d = self.d
        mix_i = mixed({k: self.inmap(k, p["templates"], p["tau_t"], p["tau_i"], p["iters"], all_iters)
                       for k in p["inmap_mix"]}, p["inmap_mix"])
        lpp = {k: self.lpp(k, p["templates"], p["lpp_epochs"]) for k in p["lpp_mix"]}
        # combine() refuses -inf: mix the columns LP++ knows, then put them back
        mix_l = np.full(next(iter(lpp.values())).shape, -np.inf)
        mix_l[:, self.kept] = mixed({k: v[:, self.kept] for k, v in lpp.items()}, p["lpp_mix"])
        return run_cascade(mix_i, mix_l, self.unseen, self.dog, d.k, d.eval_abs, d.dog_answers)


def trained_setup(d):
    """Per-backbone InMaP and LP++ logits of the trained cascade, on d.x_eval."""
    names = d.test_names or d.names
    text = d.text_test or {k: d.text_seen[k][d.cfg["templates"]] for k in d.backbones}
    casc = d.cfg["cascade"]
    inmap = {k: inmap_logits(d.cfg["inmap"], d.x_eval[k], text[k]) for k in casc["inmap_mix"]}
    lpp = {k: lpp_logits(d.manifest, k, d.x_eval[k]) for k in casc["lpp_mix"]}
    unseen, _ = class_masks(len(names), len(d.names), len(d.names), casc["dog_range"])
    return inmap, lpp, unseen


# --------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------

def accuracy(ids, y):
    """{'n', 'top1', 'top5'} (fractions) of predictions ``ids`` (N, k) for labels y."""
    n = int(len(y))
    if n == 0:
        return {"n": 0, "top1": None, "top5": None}
    return {"n": n, "top1": round(float((ids[:, 0] == y).mean()), 6),
            "top5": round(float((ids == y[:, None]).any(axis=1).mean()), 6)}


def argmax_accuracy(logits, y):
    return round(float((np.argmax(logits, axis=1) == y).mean()), 6)


def truth_groups(d, y, simulated):
    """Per image: the routing group its true class belongs to."""
    if simulated:
        return np.where(d.held[y], "held-out", np.where(d.dog_truth[y], "seen dog", "seen not-dog"))
    return np.where(d.dog_truth[y], "dog", "not-dog")


def measure(d, ids, stage, simulated):
    """Accuracy overall, per domain, per stage, per routing group; the routing table."""
    y = d.y_eval
    groups = truth_groups(d, y, simulated)
    group_names = ("seen not-dog", "seen dog", "held-out") if simulated else ("not-dog", "dog")
    domains = np.array([domain_of(d.names[c]) for c in y])
    out = {"overall": accuracy(ids, y),
           "per_domain": {dom: accuracy(ids[domains == dom], y[domains == dom])
                          for dom in dict.fromkeys(domain_of(n) for n in d.names)
                          if (domains == dom).any()},
           "per_stage": {STAGE_NAMES[s]: accuracy(ids[stage == s], y[stage == s]) for s in STAGES},
           "per_group": {g: accuracy(ids[groups == g], y[groups == g]) for g in group_names},
           "routing": {"rows": list(group_names), "cols": [STAGE_NAMES[s] for s in STAGES],
                       "counts": [[int(((groups == g) & (stage == s)).sum()) for s in STAGES]
                                  for g in group_names]}}
    return out


def per_class_rows(d, ids, setup):
    y, rows = d.y_eval, []
    for c in np.unique(y):
        m = y == c
        acc = accuracy(ids[m], y[m])
        wrong = ids[m, 0][ids[m, 0] != c]
        confused = int(np.bincount(wrong).argmax()) if wrong.size else None
        names = d.test_names or d.names
        rows.append({"setup": setup, "class": int(c), "name": d.names[c], "domain": domain_of(d.names[c]),
                     "held_out": bool(d.held[c]) if setup == "simulated" else False,
                     "n": acc["n"], "top1": acc["top1"], "top5": acc["top5"],
                     "most_confused_with": names[confused] if confused is not None else ""})
    return rows


def routing_errors(result, simulated):
    """Plain-language lines for the images that went to the wrong stage."""
    r = dict(zip(result["routing"]["rows"], result["routing"]["counts"]))
    lines = []

    def line(group, col, what):
        counts = r[group]
        n, total = counts[col], sum(counts)
        if total:
            lines.append(f"{n} of {total} ({100 * n / total:.1f}%) {what}")

    if simulated:
        line("seen not-dog", 0, "seen not-dog images went to InMaP, which named a held-out class")
        line("seen dog", 0, "seen dog images went to InMaP")
        line("seen not-dog", 2, "not-dog images went to the dog head")
        line("seen dog", 1, "dog images did not reach the dog head: LP++ answered")
        line("held-out", 1, "held-out images were kept by LP++ and never reached InMaP")
        line("held-out", 2, "held-out images went to the dog head")
    else:
        line("not-dog", 0, "not-dog images went to InMaP, which named an unseen class")
        line("dog", 0, "dog images went to InMaP")
        line("not-dog", 2, "not-dog images went to the dog head")
        line("dog", 1, "dog images did not reach the dog head: LP++ answered")
    return lines


def config_warnings(d):
    """Routing settings that contradict the class list."""
    casc, out = d.cfg["cascade"], []
    lo, hi = (int(v) for v in casc["dog_range"])
    dog_domain = d.dog_domain
    if lo <= hi and lo < len(d.names):
        foreign = [n for n in d.names[lo:hi + 1] if domain_of(n) != dog_domain]
        missing = [n for i, n in enumerate(d.names) if domain_of(n) == dog_domain and not lo <= i <= hi]
        if foreign:
            out.append(f"cascade.dog_range [{lo}, {hi}] covers {len(foreign)} classes outside "
                       f"{dog_domain}: {', '.join(foreign[:5])}")
        if missing:
            out.append(f"cascade.dog_range [{lo}, {hi}] leaves out {len(missing)} {dog_domain} "
                       f"classes: {', '.join(missing[:5])}")
    else:
        out.append(f"cascade.dog_range [{lo}, {hi}] holds no class")
    return out


def mix_curve(run, p, which, weights):
    """[(w, top-1)] with ``which`` mix = {first backbone: w, second: 1 - w}."""
    keys = list(p[which])
    curve = []
    for w in weights:
        q = dict(p, **{which: {keys[0]: float(w), keys[1]: round(1.0 - float(w), 10)}})
        curve.append((float(w), run(q)))
    return curve


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


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def report(cfg, out, holdout=None, seed=1, per_class_limit=None):
    from ..plot import bar_plot, heatmap_plot, line_plot
    t0 = time.time()
    d = load_data(cfg, holdout, seed, per_class_limit)
    p = params_of(cfg)
    casc = cfg["cascade"]
    sim = Simulated(d)
    with step("dog head on the validation dog images", d.times):
        d.dog_answers.get([a for a, y in zip(d.eval_abs, d.y_eval) if d.dog_truth[y]])

    with step("trained cascade", d.times):
        inmap, lpp, unseen = trained_setup(d)
        ids_t, stage_t = run_cascade(mixed(inmap, casc["inmap_mix"]), mixed(lpp, casc["lpp_mix"]),
                                     unseen, d.dog, d.k, d.eval_abs, d.dog_answers)
        trained = measure(d, ids_t, stage_t, simulated=False)
    with step(f"simulated unseen: {len(d.holdout)} held-out classes", d.times):
        ids_s, stage_s = sim.run(p)
        simulated = measure(d, ids_s, stage_s, simulated=True)

    with step("backbones alone vs mixed", d.times):
        def solo(mix, key):
            return {key: 1.0} if key in mix else mix    # a backbone a stage does not use: as configured

        def columns(inmap_mix, lpp_mix):
            ids, _ = run_cascade(mixed(inmap, inmap_mix), mixed(lpp, lpp_mix), unseen, d.dog, d.k,
                                 d.eval_abs, d.dog_answers)
            sids, _ = sim.run(dict(p, inmap_mix=inmap_mix, lpp_mix=lpp_mix))
            return {"LP++ alone (trained, seen classes)": argmax_accuracy(mixed(lpp, lpp_mix), d.y_eval),
                    "InMaP on held-out images (simulated)": _held_out_top1(d, sim, p, inmap_mix),
                    "cascade, trained": accuracy(ids, d.y_eval)["top1"],
                    "cascade, simulated": accuracy(sids, d.y_eval)["top1"]}
        alone = {cfg["backbones"][key]["model"]: columns(solo(casc["inmap_mix"], key), solo(casc["lpp_mix"], key))
                 for key in d.backbones}
        alone["mixed"] = columns(casc["inmap_mix"], casc["lpp_mix"])

    curves = {}
    if len(d.backbones) == 2 and all(len(p[m]) == 2 for m in ("inmap_mix", "lpp_mix")):
        with step("accuracy vs mixing weight", d.times):
            weights = (cfg.get("sweep") or DEFAULT_SWEEP).get("mix_weights", DEFAULT_SWEEP["mix_weights"])
            top1 = lambda q: accuracy(sim.run(q)[0], d.y_eval)["top1"]  # noqa: E731
            curves["InMaP mix (simulated)"] = mix_curve(top1, p, "inmap_mix", weights)
            curves["LP++ mix (simulated)"] = mix_curve(top1, p, "lpp_mix", weights)
            keys = list(casc["lpp_mix"])

            def trained_top1(q):
                ids, _ = run_cascade(mixed(inmap, casc["inmap_mix"]), mixed(lpp, q["lpp_mix"]),
                                     unseen, d.dog, d.k, d.eval_abs, d.dog_answers)
                return accuracy(ids, d.y_eval)["top1"]
            curves["LP++ mix (trained)"] = mix_curve(trained_top1, p, "lpp_mix", weights)
            mix_label = f"weight of {cfg['backbones'][keys[0]]['model']} (the other gets 1 - w)"

    rows = per_class_rows(d, ids_t, "trained") + per_class_rows(d, ids_s, "simulated")
    summary = {
        "config": cfg["_path"], "val_list_sha256": d.val_sha256, "seed": d.seed,
        "images": len(d.eval_paths), "unreadable": d.unreadable,
        "held_out_classes": [d.names[c] for c in d.holdout], "holdout_note": d.holdout_note,
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
        preds = [{"setup": s, "path": path, "label": int(y), "stage": st, "top5": " ".join(map(str, ids))}
                 for s, I, S in (("trained", ids_t, stage_t), ("simulated", ids_s, stage_s))
                 for path, y, ids, st in zip(d.eval_paths, d.y_eval, I, S)]
        atomic_write_text(os.path.join(out, "predictions.csv"),
                          csv_text(preds, ["setup", "path", "label", "stage", "top5"]))
        doms = list(trained["per_domain"])
        bar_plot(os.path.join(out, "accuracy_per_domain.png"),
                 doms + ["held-out (sim.)"],
                 [round(100 * trained["per_domain"][x]["top1"], 2) for x in doms]
                 + [round(100 * (simulated["per_group"]["held-out"]["top1"] or 0.0), 2)],
                 "Cascade top-1 per domain (trained) and on held-out classes (simulated)", "top-1 (%)")
        tr, sm = trained["routing"], simulated["routing"]
        heatmap_plot(os.path.join(out, "routing.png"),
                     [f"trained: {r}" for r in tr["rows"]] + [f"simulated: {r}" for r in sm["rows"]],
                     tr["cols"], tr["counts"] + sm["counts"], "Routing: true group vs stage that answered")
        plots = ["accuracy_per_domain.png", "routing.png"]
        if curves:
            line_plot(os.path.join(out, "mixing_weight.png"),
                      {n: ([w for w, _ in c], [100 * a for _, a in c]) for n, c in curves.items()},
                      "Cascade top-1 vs backbone mixing weight", mix_label, "top-1 (%)")
            plots.append("mixing_weight.png")
        atomic_write_text(os.path.join(out, "report.md"), report_markdown(d, summary, rows, plots))
    write_json(os.path.join(out, "timings.json"), {"times_s": d.times, "total_s": round(time.time() - t0, 2)})
    print(f"trained cascade top-1 {pct(trained['overall']['top1'])}%, simulated "
          f"{pct(simulated['overall']['top1'])}% on {len(d.eval_paths)} images; "
          f"wrote {os.path.join(out, 'report.md')}")
    for w in summary["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return summary


def _held_out_top1(d, sim, p, mix):
    """InMaP's top-1 on the held-out classes' images (simulated setup)."""
    m = d.held[d.y_eval]
    if not m.any():
        return None
    logits = mixed({k: sim.inmap(k, p["templates"], p["tau_t"], p["tau_i"], p["iters"]) for k in mix}, mix)
    return argmax_accuracy(logits[m], d.y_eval[m])


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


# --------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------

def sweep_grid(cfg):
    grid = dict(DEFAULT_SWEEP)
    unknown = set(cfg.get("sweep") or {}) - set(grid) - {"_doc"}
    if unknown:
        raise ContestFormatError(f"{cfg['_path']}: unknown sweep settings {sorted(unknown)} "
                                 f"(known: {', '.join(grid)})")
    grid.update({k: v for k, v in (cfg.get("sweep") or {}).items() if k != "_doc"})
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ContestFormatError(f"{cfg['_path']}: sweep.{k} must be a non-empty list")
    return grid


def sweep(cfg, out, write, holdout=None, seed=1, per_class_limit=None):
    from tqdm import tqdm

    from ..plot import bar_plot, line_plot
    t0 = time.time()
    grid = sweep_grid(cfg)
    p0 = params_of(cfg)
    d = load_data(cfg, holdout, seed, per_class_limit, templates=grid["templates"])
    sim = Simulated(d)
    with step("dog head on the validation dog images", d.times):
        d.dog_answers.get([a for a, y in zip(d.eval_abs, d.y_eval) if d.dog_truth[y]])
    iters_all = sorted({int(i) for i in grid["inmap_iters"]} | {p0["iters"]})
    trials = []

    def score(p, group):
        ids, _ = sim.run(p, all_iters=iters_all)
        a = accuracy(ids, d.y_eval)
        trials.append({"step": group, **flat(p), "top1": a["top1"], "top5": a["top5"], "n": a["n"]})
        return a["top1"]

    def best_of(group, candidates, best):
        """Try each candidate (the current one first); keep the highest top-1."""
        current = best
        best_score = score(current, group)
        for q in tqdm(candidates, desc=f"sweep {group}", unit="setting"):
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
        p = best_of("inmap", [dict(p, tau_t=float(a), tau_i=float(b), iters=int(n))
                              for a in grid["inmap_tau_t"] for b in grid["inmap_tau_i"]
                              for n in grid["inmap_iters"]], p)
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
    tuned = apply_params(cfg, p)
    tuned["_tuned"] = {"by": "python -m jclip.validate sweep", "from": cfg["_path"],
                       "val_list_sha256": d.val_sha256, "seed": d.seed,
                       "held_out_classes": [d.names[c] for c in d.holdout],
                       "images": len(d.eval_paths), "top1": best, "baseline_top1": baseline["top1"],
                       "trials": len(trials)}
    os.makedirs(out, exist_ok=True)
    fields = list(trials[0])
    atomic_write_text(os.path.join(out, "trials.csv"), csv_text(trials, fields))
    summary = {"config": cfg["_path"], "seed": d.seed, "images": len(d.eval_paths),
               "held_out_classes": tuned["_tuned"]["held_out_classes"], "grid": grid,
               "baseline": flat(p0), "baseline_top1": baseline["top1"],
               "chosen": flat(p), "chosen_top1": best, "trials": len(trials),
               "first_backbones": "/".join(list(p0[m])[0] for m in ("inmap_mix", "lpp_mix")),
               "retrain_needed": p["templates"] != p0["templates"] or p["lpp_epochs"] != p0["lpp_epochs"],
               "written": os.path.abspath(write)}
    write_json(os.path.join(out, "sweep.json"), summary)
    plots = []
    by_group = {}
    for r in trials:
        by_group.setdefault(r["step"], []).append(r)
    mix_series = {}
    for mix in ("inmap_mix", "lpp_mix"):
        rs = by_group.get(mix, [])
        if rs:
            w = sorted({r[f"{mix}_w"]: r["top1"] for r in rs}.items())
            mix_series[f"{'InMaP' if mix == 'inmap_mix' else 'LP++'} mix"] = (
                [x for x, _ in w], [100 * y for _, y in w])
    if mix_series:
        first = list(p0["lpp_mix"])[0]
        line_plot(os.path.join(out, "mixing_weight.png"), mix_series,
                  "Simulated cascade top-1 vs mixing weight (sweep)",
                  f"weight of {cfg['backbones'][first]['model']}", "top-1 (%)")
        plots.append("mixing_weight.png")
    tmpl = {r["templates"]: r["top1"] for r in by_group.get("templates", [])}
    if tmpl:
        bar_plot(os.path.join(out, "templates.png"), list(tmpl), [round(100 * v, 2) for v in tmpl.values()],
                 "Simulated cascade top-1 per template set", "top-1 (%)")
        plots.append("templates.png")
    inmap_rows = by_group.get("inmap", [])
    if inmap_rows:
        series = {}
        for r in inmap_rows:
            series.setdefault(f"tau_t {r['tau_t']:g}, tau_i {r['tau_i']:g}", {})[r["iters"]] = 100 * r["top1"]
        line_plot(os.path.join(out, "inmap.png"),
                  {n: (sorted(v), [v[i] for i in sorted(v)]) for n, v in series.items()},
                  "Simulated cascade top-1 vs InMaP iterations", "iterations", "top-1 (%)")
        plots.append("inmap.png")
    atomic_write_text(os.path.join(out, "sweep.md"), sweep_markdown(summary, trials, plots, write))
    atomic_write_text(write, json.dumps(tuned, indent=1) + "\n")
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
            "inmap_mix_w": list(p["inmap_mix"].values())[0], "lpp_mix_w": list(p["lpp_mix"].values())[0]}


def describe(p, group):
    f = flat(p)
    return {"templates": f"templates={f['templates']}", "lpp_epochs": f"epochs={f['lpp_epochs']}",
            "inmap": f"tau_t={f['tau_t']:g} tau_i={f['tau_i']:g} iters={f['iters']}",
            "inmap_mix": f"InMaP {p['inmap_mix']}", "lpp_mix": f"LP++ {p['lpp_mix']}"}[group]


def sweep_markdown(s, trials, plots, write):
    md = ["# Sweep on the validation split\n",
          f"{s['trials']} settings tried on {s['images']} held-out images, scored by the simulated "
          f"cascade's top-1 ({len(s['held_out_classes'])} seen classes held out as unseen, seed {s['seed']}). "
          "One group of settings changes at a time, keeping the best so far; a mixing weight "
          f"w is the first backbone's (`{s['first_backbones']}`), the other gets 1 - w. "
          "The score is measured on the same images the sweep tunes on, so it is optimistic; "
          "`val.sh report` with a different `--seed` (other held-out classes) is a fairer check.\n",
          md_table(["", "templates", "LP++ epochs", "tau_t", "tau_i", "iters", "InMaP mix w", "LP++ mix w", "top-1 %"],
                   [[name] + [v for k, v in p.items()] + [pct(t)] for name, p, t in
                    (("configuration", s["baseline"], s["baseline_top1"]),
                     ("chosen", s["chosen"], s["chosen_top1"]))]),
          f"Written: `{write}`. "
          + ("Templates or LP++ epochs changed: run `train.sh` with it, then `test.sh`."
             if s["retrain_needed"] else "Only test-time settings changed: `test.sh --config` it."),
          ""]
    md += [f"![{p}]({p})\n" for p in plots]
    md.append("## Every setting tried\n")
    md.append(md_table(["step"] + list(trials[0])[1:-3] + ["top-1 %", "top-5 %"],
                       [[r["step"]] + [r[k] for k in list(r)[1:-3]] + [pct(r["top1"]), pct(r["top5"])]
                        for r in trials]))
    return "\n".join(md)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m jclip.validate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, default_out in (("report", "val_report"), ("sweep", "val_sweep")):
        s = sub.add_parser(name)
        s.add_argument("--config", default=DEFAULT_CONFIG, help="configuration JSON")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set cascade.lpp_mix.vit=0.5 (repeatable)")
        s.add_argument("--out", help=f"output folder (default OUT_DIR/{default_out})")
        s.add_argument("--seed", type=int, default=1, help="seed of the held-out (simulated unseen) classes")
        s.add_argument("--holdout", type=int, help="classes held out as unseen (default: as many as "
                       "the test set's unseen classes, at most half the non-dog classes)")
        s.add_argument("--per-class", type=int, help="at most this many validation images per class")
        if name == "sweep":
            s.add_argument("--write", help="tuned configuration to write (default OUT_DIR/tuned.json)")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.set)
        out = a.out or os.path.join(cfg["out_dir"], "val_report" if a.cmd == "report" else "val_sweep")
        if a.cmd == "report":
            report(cfg, out, a.holdout, a.seed, a.per_class)
        else:
            sweep(cfg, out, a.write or os.path.join(cfg["out_dir"], "tuned.json"),
                  a.holdout, a.seed, a.per_class)
    except (ContestFormatError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
