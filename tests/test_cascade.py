"""The contest cascade's routing, mixing, dog-head substitution and fallback
(jclip.pipeline.cascade.Cascade), and the manifest checks, on hand-made logits.

Each expected answer is derived from the routing rules of SPEC section 2
independently of the code: the stage from the top-1 of the mixed logits, the
ids from that stage's ranking.
"""
import json
import os

import numpy as np
import pytest

from jclip.data.contest import ContestFormatError
from jclip.pipeline import manifest
from jclip.pipeline.cascade import Cascade, class_masks, fallback_ids
from jclip.pipeline.config import load_config
from jclip.pipeline.test import write_result


class Fixed:
    """A head whose logits are given per row (features are row indices)."""

    def __init__(self, logits):
        self.table = np.asarray(logits, np.float64)

    def logits(self, rows):
        return self.table[np.asarray(rows)[:, 0].astype(int)]


class Dogs:
    """A dog head answering from a table; None where it 'cannot read' the file."""

    def __init__(self, answers):
        self.answers, self.asked = answers, []

    def topk(self, paths):
        self.asked += list(paths)
        return [self.answers.get(p) for p in paths]


def rows(n):
    return {"a": np.arange(n)[:, None], "b": np.arange(n)[:, None]}


def make(inmap_a, inmap_b, lpp_a, lpp_b, dogs, num_seen, dog_range, **kw):
    unseen, dog = class_masks(len(inmap_a[0]), num_seen, dog_range)
    return Cascade({"a": Fixed(inmap_a), "b": Fixed(inmap_b)}, {"a": Fixed(lpp_a), "b": Fixed(lpp_b)},
                   {"a": 0.5, "b": 0.5}, {"a": 0.6, "b": 0.4}, unseen, dog, 5, dogs, **kw)


def test_routing_mixing_and_dog_substitution():
    C, S, dogs_at = 12, 9, (5, 8)
    rng = np.random.default_rng(0)
    ia, ib = rng.normal(size=(5, C)), rng.normal(size=(5, C))
    la, lb = rng.normal(size=(5, S)), rng.normal(size=(5, S))
    ia[0, 10] = ib[0, 10] = 9            # row 0: unseen top-1 -> InMaP
    # row 1: InMaP's a says unseen, b says seen: the 0.5/0.5 mix decides (seen 3)
    ia[1, 11], ib[1, 3], ia[1, 3] = 6, 9, 1
    la[1, 1] = lb[1, 1] = 9              # ... LP++ top-1 1, not a dog -> LP++
    la[2, 6] = lb[2, 6] = 9              # row 2: LP++ names a dog -> the dog head
    la[3, 7] = lb[3, 7] = 9              # row 3: a dog, but the dog head cannot read it
    # row 4: LP++ a says 2 (weight 0.6), b says dog 6 (0.4): the mix says 2
    la[4, 2], lb[4, 6] = 9, 10
    for r in (2, 3, 4):
        ia[r, :9] += 20                  # seen top-1 for InMaP
        ib[r, :9] += 20
    paths = [f"img{i}.jpg" for i in range(5)]
    dog_answer = np.array([6, 5, 7, 8, 0])
    dogs = Dogs({"img2.jpg": dog_answer})
    pred = make(ia, ib, la, lb, dogs, S, dogs_at).predict(rows(5), paths)

    mix_i, mix_l = 0.5 * ia + 0.5 * ib, 0.6 * la + 0.4 * lb
    rank = lambda v: list(np.argsort(-v, kind="stable")[:5])  # noqa: E731
    assert list(pred.stage) == ["inmap", "lpp", "dog", "lpp-fallback", "lpp"]
    assert list(pred.ids[0]) == rank(mix_i[0]) and pred.ids[0, 0] == 10
    assert list(pred.ids[1]) == rank(mix_l[1]) and pred.ids[1, 0] == 1
    assert list(pred.ids[2]) == list(dog_answer)
    assert list(pred.ids[3]) == rank(mix_l[3])           # LP++'s answer stands
    assert list(pred.ids[4]) == rank(mix_l[4]) and pred.ids[4, 0] == 2
    assert dogs.asked == ["img2.jpg", "img3.jpg"]        # only the images routed to it
    assert (pred.ids[1:] < S).all()                      # LP++ never names an unseen class


def test_unreadable_images_get_the_most_frequent_top1():
    C, S = 8, 8
    ia = np.zeros((4, C))
    la = np.zeros((4, S))
    for r, c in enumerate((3, 3, 99, 1)):
        if c < S:
            la[r, c] = 5
    la[2] = np.nan                      # the unreadable row's features are never used
    pred = make(ia, ia, la, la, Dogs({}), S, (6, 7)).predict(rows(4), list("abcd"),
                                                             readable=np.array([1, 1, 0, 1], bool))
    assert list(pred.stage) == ["lpp", "lpp", "unreadable", "lpp"]
    assert list(pred.ids[2]) == fallback_ids([3, 3, 1], C, 5) == [3, 1, 0, 2, 4]


def test_held_out_classes_are_never_named_by_lpp():
    C, kept = 6, np.array([0, 2, 3, 5])       # classes 1 and 4 held out (the simulated setup)
    rng = np.random.default_rng(1)
    ia = rng.normal(size=(3, C))
    ia[:, [1, 4]] -= 50                         # InMaP never picks a held-out class here
    la = rng.normal(size=(3, len(kept)))
    held = np.zeros(C, bool)
    held[[1, 4]] = True
    c = Cascade({"a": Fixed(ia)}, {"a": Fixed(la)}, {"a": 1.0}, {"a": 1.0}, held,
                np.zeros(C, bool), 4, Dogs({}), lpp_classes=kept)
    pred = c.predict({"a": np.arange(3)[:, None]}, list("xyz"))
    assert list(pred.stage) == ["lpp"] * 3
    for r in range(3):
        assert list(pred.ids[r]) == list(kept[np.argsort(-la[r], kind="stable")])
    with_mix = c.replace(lpp_mix={"a": 2.0}).lpp_logits({"a": np.arange(3)[:, None]})
    assert np.isinf(with_mix[:, [1, 4]]).all() and np.allclose(with_mix[:, kept], 2 * la)


def test_fallback_is_the_most_frequent_top1():
    assert fallback_ids([3, 3, 7, 7, 1, 9, 9, 9], 12, 5) == [9, 3, 7, 1, 0]
    assert fallback_ids([], 6, 5) == [0, 1, 2, 3, 4]


def test_write_result_checks_before_replacing(tmp_path):
    folder = tmp_path / "TestSetB"
    folder.mkdir()
    for n in (10, 2, 1):
        (folder / f"image_{n}.jpg").write_bytes(b"x")
    rows_ = [("image_10.jpg", [5, 4, 3, 2, 1]), ("image_1.jpg", [0, 1, 2, 3, 4]),
             ("image_2.jpg", [9, 8, 7, 6, 5])]
    out = tmp_path / "result.txt"
    write_result(str(out), rows_, str(folder), 10, 5)
    assert out.read_text() == "image_1.jpg 0 1 2 3 4\nimage_2.jpg 9 8 7 6 5\nimage_10.jpg 5 4 3 2 1\n"
    before = out.read_text()
    with pytest.raises(ValueError, match="missing"):       # a line short: nothing replaced
        write_result(str(out), rows_[:2], str(folder), 10, 5)
    assert out.read_text() == before and sorted(os.listdir(tmp_path)) == ["TestSetB", "result.txt"]


def test_manifest_refuses_a_replaced_or_missing_head(tmp_path):
    head = tmp_path / "lpp_vit.npz"
    head.write_bytes(b"trained")
    cfg = load_config(None, [f"out_dir={tmp_path}", 'cascade.lpp_mix={"vit": 1.0}'])
    shots, dog = tmp_path / "train_4shot.txt", tmp_path / "dog_head.safetensors"
    shots.write_text("a.jpg 0\n")
    dog.write_bytes(b"dog head")
    written = {"config": cfg.to_dict(), "config_file": "c.json", "device": "cpu",
               "train_4shot": manifest.output_entry(str(shots)), "val": {"path": "v.txt", "sha256": None},
               "backbones": {"vit": {"model": "ViT-B/32", "weights": "v.pkl", "source_sha256": "a" * 64},
                             "dog": {"model": "convnextv2_atto", "weights": "c.pkl", "sha256": "b" * 64}},
               "outputs": {"lpp_vit": manifest.output_entry(str(head), best_epoch=2),
                           "dog_head": manifest.output_entry(str(dog))}}
    manifest.write(cfg, written)
    assert manifest.read(cfg) == json.loads(json.dumps(written))
    head.write_bytes(b"another run")
    with pytest.raises(ContestFormatError, match="lpp_vit.npz.*run train.sh again"):
        manifest.read(cfg)
    head.unlink()
    with pytest.raises(ContestFormatError, match="missing; run train.sh again"):
        manifest.read(cfg)
    head.write_bytes(b"trained")
    with pytest.raises(ContestFormatError, match="`lpp` differs"):
        manifest.read(cfg.with_values({"lpp.epochs": cfg.lpp.epochs + 1}))
    # a damaged manifest: one line naming the file and the key
    for damaged, key in (({**written, "outputs": []}, "outputs"),
                         ({**written, "train_4shot": {"path": "x", "sha256": 7}}, "train_4shot.sha256")):
        (tmp_path / "manifest.json").write_text(json.dumps(damaged))
        with pytest.raises(ContestFormatError, match=f"manifest.json: {key}: .*run train.sh again"):
            manifest.read(cfg)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ContestFormatError, match="no trained heads; run train.sh first"):
        manifest.read(cfg)


# --------------------------------------------------------------------------
# InMaP stops once the proxies stop moving, with the official result
# --------------------------------------------------------------------------

@pytest.mark.parametrize("c,d,n", [
    pytest.param(40, 512, 2000, marks=pytest.mark.slow),   # reached a fixed point at step 312 on one CPU
    (8, 32, 100),        # a few near-zero entries drift by an ulp every step on most CPUs
])
def test_inmap_early_stop_is_bit_identical_to_every_official_step(monkeypatch, c, d, n):
    """InMaP stops exactly after the first step that leaves the proxies unchanged
    bit for bit (whether such a step comes depends on the machine's arithmetic,
    so the reference finds it on this machine), and its proxies and snapshots
    equal those of running all 2,000 official steps."""
    import jclip.heads.inmap as inmap_mod
    from jclip.heads import InMaP
    rng = np.random.default_rng(0)
    t = rng.normal(size=(c, d)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    x = t[rng.integers(0, c, n)] * 0.3 + rng.normal(size=(n, d)).astype(np.float32) * 0.04
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    step = inmap_mod.proxy_step
    # reference: the official loop, every one of the 2,000 steps
    target = inmap_mod.harden(inmap_mod.sinkhorn(x @ t.T, 0.01, 0.0, 20), 0.6).T.astype(x.dtype) @ x
    p, lr, g, ref, fixed_at = t.copy(), 10.0, np.inf, {}, None
    for i in range(2000):
        new, lr, g = step(x, p, target, lr, 0.04, g)
        if fixed_at is None and new.tobytes() == p.tobytes():
            fixed_at = i + 1
        p = new
        if i + 1 in (100, 1900):
            ref[i + 1] = p.copy()
    calls = []
    monkeypatch.setattr(inmap_mod, "proxy_step", lambda *a: calls.append(1) or step(*a))
    head = InMaP(t, iters=2000, snapshots=(100, 1900)).fit(x)
    assert len(calls) == (fixed_at or 2000)
    assert head.proxies_.tobytes() == p.tobytes()
    assert all(head.snapshots_[k].tobytes() == ref[k].tobytes() for k in ref)
    if fixed_at is not None and fixed_at <= 1900:
        assert head.logits(x, at_iter=1900).tobytes() == head.logits(x).tobytes()


@pytest.mark.parametrize("still_from", [1, 37, 1999])
def test_inmap_stops_after_the_first_unchanged_step_on_any_machine(monkeypatch, still_from):
    """Whether real arithmetic ever reaches a bit-exact fixed point differs
    between CPUs, so here one is planted: from step ``still_from`` on the
    step returns its input proxies unchanged.  InMaP must take exactly one
    step past the last moving one, and its proxies and snapshots (those after
    the stop included) must equal the official loop's over all 2,000 steps."""
    import jclip.heads.inmap as inmap_mod
    from jclip.heads import InMaP
    rng = np.random.default_rng(1)
    t = rng.normal(size=(8, 32)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    x = t[rng.integers(0, 8, 100)] * 0.3 + rng.normal(size=(100, 32)).astype(np.float32) * 0.04
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    step = inmap_mod.proxy_step

    def planted(calls):
        def proxy_step(x, p, target, lr, tau_i, g):
            calls.append(1)
            new, lr, g = step(x, p, target, lr, tau_i, g)
            return (p.copy() if len(calls) >= still_from else new), lr, g
        return proxy_step

    keep = sorted({1, still_from, min(still_from + 1, 2000), 100, 1900})
    target = inmap_mod.harden(inmap_mod.sinkhorn(x @ t.T, 0.01, 0.0, 20), 0.6).T.astype(x.dtype) @ x
    official, p, lr, g, ref = planted([]), t.copy(), 10.0, np.inf, {}
    for i in range(2000):
        p, lr, g = official(x, p, target, lr, 0.04, g)
        if i + 1 in keep:
            ref[i + 1] = p.copy()
    assert still_from == 1 or ref[1].tobytes() != t.tobytes()     # the planted stop is the first
    calls = []
    monkeypatch.setattr(inmap_mod, "proxy_step", planted(calls))
    head = InMaP(t, iters=2000, snapshots=keep).fit(x)
    assert len(calls) == still_from
    assert head.proxies_.tobytes() == p.tobytes()
    assert sorted(head.snapshots_) == keep
    assert all(head.snapshots_[k].tobytes() == ref[k].tobytes() for k in keep)


# --------------------------------------------------------------------------
# Stage heads: the configuration's choice, its checks, and the sweep
# --------------------------------------------------------------------------

from jclip.pipeline.config import ConfigError  # noqa: E402
from jclip.pipeline.stages import StageHead  # noqa: E402

TRANSCLIP_ON_INMAP = '{"head": "transclip", "init": "inmap"}'


@pytest.mark.parametrize("override, message", [
    ('stages.unseen.head="gda"', "stages.unseen.head (--set): 'gda' cannot serve the unseen stage (it needs shots"),
    ('stages.unseen.head="transclp"', "stages.unseen.head (--set): unknown head 'transclp'; did you mean `transclip`?"),
    ('stages.seen.head="zlap"', "stages.seen.head (--set): 'zlap' cannot serve the seen stage"),
    ('stages.unseen={"head": "transclip", "init": "lpp"}', "stages.unseen.init: 'lpp' is not a valid start for transclip"),
    ('stages.unseen={"head": "zlap", "init": "zeroshot", "params": {"alpha": 1.5}}',
     "stages.unseen.params.alpha: alpha must be in [0, 1), got 1.5"),
    ('stages.seen={"head": "gda", "params": {"alphas": "x"}}', "stages.seen.params.alphas: "),
    ('stages.seen={"head": "transclip", "init": "lpp", "params": {"outer_iter": 3}}',
     "stages.seen.params.outer_iter: TransCLIP has no such hyper-parameter; did you mean `outer_iters`?"),
    ('stages.unseen={"head": "inmap", "init": "inmap"}', "stages.unseen.init: 'inmap' takes no start head"),
    ('stages.seen={"head": "lpp", "params": {"epochs": 3}}', "stages.seen.params: lpp's settings are the `lpp` section"),
    ('stages.unseen={"head": "transclip", "params": {"gammas": []}}', "stages.unseen.params.gammas: gammas must be"),
    ('sweep.unseen_heads=["inmap", "zlap on lpp"]', "sweep.unseen_heads[1].init: 'lpp' is not a valid start for zlap"),
    ('sweep.seen_heads=["lpp", "proker on inmap"]', "sweep.seen_heads[1].init: 'proker' takes no start head (heads that take one in the seen stage: transclip)"),
    ('stages.unseen.init=3', "stages.unseen.init (--set): expected a string, got 3"),
])
def test_stage_heads_are_checked_with_the_configuration(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value) and str(e.value).startswith(DEFAULT_CONFIG_PATH + ": ")
    assert "\n" not in str(e.value)


DEFAULT_CONFIG_PATH = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "jclip", "pipeline",
                                                   "default.json"))


def test_a_bad_stage_head_stops_every_command_with_one_line(tmp_path):
    import subprocess
    import sys
    cfg = json.load(open(DEFAULT_CONFIG_PATH))
    cfg["stages"]["unseen"] = {"head": "ape", "init": None, "params": {}}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    for cmd in (["jclip.pipeline", "train"], ["jclip.pipeline", "test"], ["jclip.validate", "sweep"]):
        r = subprocess.run([sys.executable, "-m", *cmd, "--config", str(path)], capture_output=True,
                           text=True, cwd=os.path.dirname(DEFAULT_CONFIG_PATH) + "/../..", timeout=120)
        assert r.returncode == 2, (cmd, r.stderr)
        assert r.stderr.strip().splitlines() == [f"error: {path}: stages.unseen.head: 'ape' cannot serve the "
                                                 f"unseen stage (it needs shots of every class and the unseen "
                                                 f"classes have none); one of: inmap, transclip, transclip_zs, "
                                                 f"zlap, zeroshot"]


def test_an_old_configuration_without_stages_gets_the_default_heads(tmp_path):
    cfg = json.load(open(DEFAULT_CONFIG_PATH))
    del cfg["stages"], cfg["sweep"]["unseen_heads"], cfg["sweep"]["seen_heads"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(cfg))
    c = load_config(str(path))
    assert StageHead.of(c.stages.unseen) == StageHead("inmap") and StageHead.of(c.stages.seen) == StageHead("lpp")
    assert "stages" not in c.to_dict()           # what a tuned copy of it writes stays as it was


def clusters(seed=0, classes=10, dim=32, sub=8, per_class=(4, 2, 12), nuisance=0.3, text_nuisance=10.0):
    """Per backbone: (text (C, D), [train, selection, evaluation] (x, y)).  Classes
    are apart in the first ``sub`` dimensions, the images tight around them; the
    text weights carry a large random part in the other dimensions, so zero-shot
    is poor while heads that learn from the images (GDA on the shots, TransCLIP on
    InMaP's proxies over the test images) do well."""
    from jclip.heads import l2_normalize
    rng = np.random.default_rng(seed)
    out = {}
    for key in ("vit", "rn"):
        means = np.zeros((classes, dim))
        means[:, :sub] = l2_normalize(rng.standard_normal((classes, sub)))
        text = means.copy()
        text[:, sub:] = text_nuisance * rng.standard_normal((classes, dim - sub)) / np.sqrt(dim - sub)
        parts = []
        for n in per_class:
            y = np.repeat(np.arange(classes), n)
            x = means[y].copy()
            x[:, sub:] += nuisance * rng.standard_normal((len(y), dim - sub)) / np.sqrt(dim - sub)
            parts.append((l2_normalize(x), y))
        out[key] = (l2_normalize(text), parts)
    return out


def synthetic_validation(cfg, seed=0, held=(1, 4, 7)):
    """(ValData, Holdout) of synthetic features: what the sweep reads from prepare()."""
    from jclip.validate.data import Part, ValData
    from jclip.validate.simulation import Holdout
    data = clusters(seed)
    classes = len(data["vit"][0])
    part = [Part({k: data[k][1][i][0] for k in data}, data["vit"][1][i][1]) for i in range(3)]
    names = [f"Animal_c{i}" for i in range(classes)]
    n_eval = len(part[2].y)
    d = ValData(cfg=cfg, manifest={}, k=5, names=names, test_names=None, val_path="val.txt", val_sha256="0" * 64,
                val_count=n_eval, used_count=0, dog=np.zeros(classes, bool), dog_domain=None,
                dog_truth=np.zeros(classes, bool), shots=[], selection=[], items=[], backbones=["vit", "rn"],
                template_sets=[cfg.templates], train=part[0], sel=part[1], eval=part[2],
                eval_paths=[f"e{i}.jpg" for i in range(n_eval)], eval_abs=[f"/e{i}.jpg" for i in range(n_eval)],
                unreadable=[], text_seen={k: {cfg.templates: data[k][0]} for k in data}, text_test=None,
                dog_head=None)
    mask = np.zeros(classes, bool)
    mask[list(held)] = True
    return d, Holdout(np.array(held), mask, 1, None)


def test_sweep_picks_the_head_that_is_best_on_held_out_data_and_train_test_use_it(tmp_path, monkeypatch):
    """The configured heads are the poor ones (zero-shot on text far from the
    images); the sweep must replace them by GDA (seen) and TransCLIP on InMaP
    (unseen), the candidates that score best on the held-out images (ZLaP is
    tried too), and write them where train.sh and test.sh read them."""
    from jclip.heads import GDA, InMaP, TransCLIP, ZeroShot
    from jclip.pipeline.heads import fit_seen, fit_unseen
    from jclip.validate import sweep as sweep_mod
    from jclip.validate.simulation import Simulated
    cfg = load_config(None, ['stages.unseen={"head": "zeroshot"}', 'stages.seen={"head": "zeroshot"}',
                             "inmap.iters=30", "lpp.epochs=20", 'sweep.templates=["imagenet7"]',
                             "sweep.lpp_epochs=[20]", "sweep.inmap_tau_t=[0.01]", "sweep.inmap_tau_i=[0.04]",
                             "sweep.inmap_iters=[30]", "sweep.mix_weights=[0.5]",
                             'sweep.unseen_heads=["zeroshot", "transclip on inmap", "zlap"]',
                             'sweep.seen_heads=["zeroshot", "gda"]'])
    d, h = synthetic_validation(cfg)
    monkeypatch.setattr(sweep_mod, "prepare", lambda *a, **k: (d, h, Simulated(d, h)))
    write = tmp_path / "tuned.json"
    s = sweep_mod.sweep(cfg, str(tmp_path / "sweep"), str(write))
    trials = {(r["step"], r[r["step"]]): r["top1"] for r in s_trials(tmp_path / "sweep" / "trials.csv")
              if r["step"] in ("seen_head", "unseen_head")}
    assert trials[("seen_head", "gda")] > trials[("seen_head", "zeroshot")] + 0.1
    assert trials[("unseen_head", "transclip on inmap")] > max(trials[("unseen_head", "zeroshot")],
                                                               trials[("unseen_head", "zlap")]) + 0.05
    assert (s["chosen"]["seen_head"], s["chosen"]["unseen_head"]) == ("gda", "transclip on inmap")
    assert s["chosen_top1"] == max(r["top1"] for r in s_trials(tmp_path / "sweep" / "trials.csv"))
    assert s["retrain_needed"]
    tuned = load_config(str(write))
    assert {k: v for k, v in tuned.to_dict()["stages"].items() if k != "_doc"} == {
        "unseen": {"head": "transclip", "init": "inmap", "params": {}},
        "seen": {"head": "gda", "init": None, "params": {}}}
    # train.sh fits the seen stage with fit_seen, test.sh the unseen one with fit_unseen
    x, y = d.train.x["vit"], d.train.y
    assert isinstance(fit_seen(tuned, x, y, d.text_seen["vit"][cfg.templates]), GDA)
    assert isinstance(fit_seen(cfg, x, y, d.text_seen["vit"][cfg.templates]), ZeroShot)
    unseen = fit_unseen(tuned, d.eval.x["vit"], d.text_seen["vit"][cfg.templates])
    assert isinstance(unseen, TransCLIP) and isinstance(unseen.init, InMaP) and unseen.init.iters == 30


def s_trials(path):
    import csv
    with open(path) as f:
        return [dict(r, top1=float(r["top1"])) for r in csv.DictReader(f)]


def test_transclip_on_inmap_unseen_head_equals_the_heads_composed_by_hand():
    from jclip.heads import InMaP
    from jclip.heads.transclip import TransCLIP
    from jclip.pipeline.heads import fit_unseen
    cfg = load_config(None, [f"stages.unseen={TRANSCLIP_ON_INMAP}", "inmap.iters=20"])
    text, parts = clusters(1)["vit"]
    x = parts[2][0]
    got = fit_unseen(cfg, x, text)
    inmap = InMaP(text, lr=cfg.inmap.lr, iters=20, iters_sinkhorn=cfg.inmap.iters_sinkhorn, tau_t=cfg.inmap.tau_t,
                  tau_i=cfg.inmap.tau_i, alpha=cfg.inmap.alpha, gamma=cfg.inmap.gamma).fit(x)
    want = TransCLIP(text, init=inmap).fit()
    np.testing.assert_array_equal(got.logits(x), want.logits(x))
