"""TransCLIP, ZLaP, GDA, APE, ProKeR and class descriptions against the
float64 PyTorch references of tests/reference_heads.py (written from the
official code's steps): probabilities within 1e-6, the same top-1, and a
planted wrong constant that the comparison catches."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import jclip  # noqa: F401  (jclip before jittor, always)
from jclip.heads import HEADS, InMaP, LPPlusPlus, ZeroShot, l2_normalize, load_head, softmax
from jclip.heads import ape as ape_mod
from jclip.heads import transclip as transclip_mod
from jclip.heads.ape import APE
from jclip.heads.descriptions import DescriptionError, description_weights, read_descriptions
from jclip.heads.gda import GDA
from jclip.heads.knn_graph import top_neighbours
from jclip.heads.proker import ProKeR, imagenet_hps
from jclip.heads.transclip import TransCLIP, TransCLIPZeroShot
from jclip.heads.zlap import ZLaP

import reference_heads as ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_task(seed=0, classes=6, dim=32, shots=4, n_val=4, n_query=20):
    """CLIP-like unit features: one shared direction, classes apart in a
    subspace, noisy text proxies off the image cluster (float64)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, 10)))
    common, gap, basis = q[:, 0], q[:, 1], q[:, 2:]
    means = rng.standard_normal((classes, 8))
    text = l2_normalize(common + 0.3 * (means + 1.0 * rng.standard_normal((classes, 8))) @ basis.T
                        + 2.0 * gap)

    def sample(n):
        y = np.repeat(np.arange(classes), n)
        x = l2_normalize(common + 0.3 * (means[y] + 0.9 * rng.standard_normal((len(y), 8))) @ basis.T
                         + 0.5 * rng.standard_normal((len(y), dim)) / np.sqrt(dim))
        return x, y

    (xs, ys), (xv, yv), (xq, yq) = sample(shots), sample(n_val), sample(n_query)
    return dict(xs=xs, ys=ys, xv=xv, yv=yv, xq=xq, yq=yq, text=text)


def agrees(p, q, tol=1e-6):
    """Probabilities within tol and the same top-1."""
    return bool(np.abs(p - q).max() < tol and (p.argmax(1) == q.argmax(1)).all())


def probs(logits):
    return softmax(np.asarray(logits, dtype=np.float64).copy())


@pytest.fixture(scope="module")
def task():
    return make_task()


# ------------------------------------------------------------- kNN graph

def test_blockwise_neighbours_equal_dense_topk():
    rng = np.random.default_rng(1)
    x, b = l2_normalize(rng.standard_normal((57, 8))), l2_normalize(rng.standard_normal((41, 8)))
    idx, sims = top_neighbours(x, b, 4, block_bytes=5 * 41 * 8)     # 5 rows a block
    want = torch.from_numpy(x @ b.T).topk(4, dim=1)
    np.testing.assert_array_equal(idx, want.indices.numpy())
    np.testing.assert_allclose(sims, want.values.numpy(), atol=1e-12)


def test_neighbours_with_ties_list_the_lower_column_first():
    """Quantised features: many equal similarities, also at the k-th place."""
    rng = np.random.default_rng(2)
    x, b = rng.integers(0, 3, (60, 4)).astype(np.float64), rng.integers(0, 3, (3000, 4)).astype(np.float64)
    idx, sims = top_neighbours(x, b, 7, block_bytes=9 * 3000 * 8)
    s = x @ b.T
    want = np.stack([np.lexsort((np.arange(3000), -row))[:7] for row in s])
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(sims, np.take_along_axis(s, want, axis=1))


def test_a_remembered_graph_serves_fewer_neighbours(monkeypatch):
    """The last large graph is kept with MEMO_K neighbours; a call for fewer
    returns its prefix, equal to a fresh computation."""
    from jclip.heads import knn_graph
    rng = np.random.default_rng(3)
    x = l2_normalize(rng.standard_normal((300, 8)))
    fresh = top_neighbours(x, x, 3)                        # 90,000 entries: not remembered
    monkeypatch.setattr(knn_graph, "MEMO_MIN_ENTRIES", 1000)
    monkeypatch.setattr(knn_graph, "_memo", {})
    top_neighbours(x, x, 5)
    assert knn_graph._memo["index"].shape == (300, knn_graph.MEMO_K)
    calls = []
    monkeypatch.setattr(knn_graph, "_block_top", lambda *a: calls.append(a))
    again = top_neighbours(x, x, 3)
    assert not calls
    np.testing.assert_array_equal(again[0], fresh[0])
    np.testing.assert_array_equal(again[1], fresh[1])


# ------------------------------------------------------------- TransCLIP

def test_transclip_zero_shot_matches_reference(task):
    got = TransCLIP(task["text"]).fit().predict_proba(task["xq"])
    want, _ = ref.transclip(task["xq"], task["text"])
    assert agrees(got, want)
    bad, _ = ref.transclip(task["xq"], task["text"], temperature=49.0)
    assert not agrees(got, bad)


def test_transclip_few_shot_picks_gamma_on_validation(task):
    head = TransCLIP(task["text"]).fit(task["xs"], task["ys"], task["xv"], task["yv"])
    run = head.transduce(task["xq"])
    want, gamma = ref.transclip(task["xq"], task["text"], task["xs"], task["ys"], task["xv"], task["yv"])
    assert run.gamma == gamma and agrees(run.probs, want)
    bad, _ = ref.transclip(task["xq"], task["text"], task["xs"], task["ys"], task["xv"], task["yv"],
                           shot_weight=45.0)
    assert not agrees(run.probs, bad)


def test_transclip_few_shot_without_validation_and_aligned_order(task):
    got = TransCLIP(task["text"]).fit(task["xs"], task["ys"]).predict_proba(task["xq"])
    want, _ = ref.transclip(task["xq"], task["text"], task["xs"], task["ys"])
    assert agrees(got, want)
    aligned = TransCLIP(task["text"], official_support_order=False).fit(task["xs"], task["ys"])
    want, _ = ref.transclip(task["xq"], task["text"], task["xs"], task["ys"], support_first=True)
    assert agrees(aligned.predict_proba(task["xq"]), want)


def test_transclip_on_inmap_and_lpp_starts(task, monkeypatch):
    inmap = InMaP(task["text"], iters=30).fit(task["xq"])
    got = TransCLIP(task["text"], init=inmap).fit().predict_proba(task["xq"])
    want, _ = ref.transclip(task["xq"], task["text"], init_prototypes=inmap.proxies_)
    assert agrees(got, want)
    lpp = LPPlusPlus(task["text"], epochs=30).fit(task["xs"], task["ys"])
    start = probs(lpp.logits(task["xq"]))
    head = TransCLIP(task["text"], init=lpp).fit()
    want, _ = ref.transclip(task["xq"], task["text"], init_predictions=start)
    assert agrees(head.predict_proba(task["xq"]), want)
    monkeypatch.setattr(transclip_mod, "Z_TEMPERATURE", 40.0)     # a planted wrong constant
    assert not agrees(TransCLIP(task["text"], init=lpp).fit().predict_proba(task["xq"]), want)


def test_transclip_float32_close_to_float64(task):
    x32 = task["xq"].astype(np.float32)
    p32 = TransCLIP(task["text"].astype(np.float32)).fit().predict_proba(x32)
    assert p32.dtype == np.float32
    p64 = TransCLIP(task["text"]).fit().predict_proba(task["xq"])
    assert np.abs(p32 - p64).max() < 1e-3


# ------------------------------------------------------------- ZLaP

def test_zlap_matches_exact_propagation(task):
    head = ZLaP(task["text"], tol=1e-13, maxiter=1000).fit()
    got = head.logits(task["xq"])
    want = ref.zlap(task["xq"], task["text"])
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)
    assert (got.argmax(1) == want.argmax(1)).all()
    # the official stop (1e-6 relative, 50 steps) stays within its tolerance
    default = ZLaP(task["text"]).fit().logits(task["xq"])
    assert np.abs(default - want).max() < 1e-5
    assert not np.allclose(got, ref.zlap(task["xq"], task["text"], alpha=0.31), rtol=1e-6)


def test_zlap_on_inmap_proxies_scales_similarities(task):
    inmap = InMaP(task["text"], iters=30).fit(task["xq"])
    head = ZLaP(task["text"], init=inmap, tol=1e-13, maxiter=1000).fit()
    assert head.scale_sim_
    want = ref.zlap(task["xq"], inmap.proxies_, scale_sim=True)
    np.testing.assert_allclose(head.logits(task["xq"]), want, rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match="class prototypes"):
        ZLaP(task["text"], init=LPPlusPlus(task["text"], epochs=2).fit(task["xs"], task["ys"])).fit()


# ------------------------------------------------------------- GDA, APE, ProKeR

def test_gda_matches_reference(task):
    head = GDA(task["text"]).fit(task["xs"], task["ys"], task["xv"], task["yv"])
    want, alpha = ref.gda(task["xs"], task["ys"], task["text"], task["xv"], task["yv"], task["xq"])
    assert head.alpha_ == alpha and agrees(probs(head.logits(task["xq"])), probs(want))
    bad, _ = ref.gda(task["xs"], task["ys"], task["text"], None, None, task["xq"], shrink=1.5)
    free = GDA(task["text"]).fit(task["xs"], task["ys"])
    good, _ = ref.gda(task["xs"], task["ys"], task["text"], None, None, task["xq"])
    assert free.alpha_ == 0.1 and agrees(probs(free.logits(task["xq"])), probs(good))
    assert not agrees(probs(free.logits(task["xq"])), probs(bad))


def _by_class(x, y):
    return np.stack([x[y == c] for c in range(y.max() + 1)])


def test_ape_matches_reference(task, monkeypatch):
    grid = dict(search_scale=(7, 7, 0.5), search_step=(12, 5, 3))
    head = APE(task["text"], **grid).fit(task["xs"], task["ys"], task["xv"], task["yv"])
    feat_num = 32 * 500 // 1024
    want, best = ref.ape(_by_class(task["xs"], task["ys"]), task["text"], task["xv"], task["yv"],
                         task["xq"], feat_num, scale=grid["search_scale"], step=grid["search_step"])
    assert (head.beta_, head.alpha_, head.gamma_) == pytest.approx(best)
    assert agrees(probs(head.logits(task["xq"])), probs(want))
    free = APE(task["text"]).fit(task["xs"], task["ys"])
    want, _ = ref.ape(_by_class(task["xs"], task["ys"]), task["text"], None, None, task["xq"], feat_num)
    assert agrees(probs(free.logits(task["xq"])), probs(want))
    monkeypatch.setattr(ape_mod, "KL_EPS", 1e-3)                # a planted wrong constant
    assert not agrees(probs(APE(task["text"]).fit(task["xs"], task["ys"]).logits(task["xq"])), probs(want))
    bad, _ = ref.ape(_by_class(task["xs"], task["ys"]), task["text"], None, None, task["xq"], feat_num,
                     w=(0.6, 0.4))
    assert not agrees(probs(free.logits(task["xq"])), probs(bad))


def test_proker_matches_reference(task):
    head = ProKeR(task["text"]).fit(task["xs"], task["ys"], task["xv"], task["yv"])
    want, (beta, lm) = ref.proker(task["xs"], task["ys"], task["text"], task["xv"], task["yv"], task["xq"])
    assert (head.beta_, head.lmbda_) == pytest.approx((beta, lm))
    assert agrees(probs(head.logits(task["xq"])), probs(want))
    free = ProKeR(task["text"]).fit(task["xs"], task["ys"])
    assert (free.beta_, free.lmbda_) == imagenet_hps(4) == (1.5, 0.05)
    want, _ = ref.proker(task["xs"], task["ys"], task["text"], None, None, task["xq"], fixed=(1.5, 0.05))
    assert agrees(probs(free.logits(task["xq"])), probs(want))
    bad, _ = ref.proker(task["xs"], task["ys"], task["text"], None, None, task["xq"], fixed=(1.5, 0.06))
    assert not agrees(probs(free.logits(task["xq"])), probs(bad), tol=1e-9)


# ------------------------------------------------------------- API, files, registry

def _fitted(name, task, tmp_path):
    t = task["text"]
    if name == "transclip_on_lpp":
        return TransCLIP(t, init=LPPlusPlus(t, epochs=10).fit(task["xs"], task["ys"])).fit(
            task["xs"], task["ys"], task["xv"], task["yv"])
    if name == "zlap_on_inmap":
        return ZLaP(t, init=InMaP(t, iters=10).fit(task["xq"])).fit()
    return HEADS[name].cls(text_weights=t).fit(task["xs"], task["ys"], task["xv"], task["yv"])


@pytest.mark.parametrize("name", ["transclip", "transclip_zs", "zlap", "gda", "ape", "proker",
                                  "transclip_on_lpp", "zlap_on_inmap"])
def test_save_load_round_trip(name, task, tmp_path):
    head = _fitted(name, task, tmp_path)
    path = head.save(tmp_path / f"{name}.npz")
    back = load_head(path)
    assert type(back) is type(head)
    np.testing.assert_array_equal(back.logits(task["xq"]), head.logits(task["xq"]))


def test_bad_input_is_one_clear_error(task):
    with pytest.raises(ValueError, match="gammas"):
        TransCLIP(task["text"], gammas=()).fit()
    with pytest.raises(ValueError, match="alpha"):
        ZLaP(task["text"], alpha=1.5).fit()
    with pytest.raises(ValueError, match="not fitted"):
        TransCLIP(task["text"], init=InMaP(task["text"])).fit()
    with pytest.raises(ValueError, match="labels"):
        GDA(task["text"]).fit(task["xs"])
    with pytest.raises(ValueError, match="feat_num"):
        APE(task["text"], feat_num=99).fit(task["xs"], task["ys"])
    assert isinstance(TransCLIPZeroShot(task["text"]).fit(task["xs"], task["ys"]).support_, type(None))


def test_fewshot_study_runs_the_new_heads(task):
    from jclip.fewshot.study import METHODS, make_head
    for name in ("transclip", "transclip_zs", "zlap", "gda", "ape", "proker"):
        assert name in METHODS
        head = make_head(name, 0, task["text"], 6)
        head.fit(task["xs"], task["ys"], task["xv"], task["yv"])
        assert head.score(task["xq"], task["yq"]) > 0.5


# ------------------------------------------------------------- descriptions

def test_description_weights_average_like_templates(tmp_path):
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps({"Shiba Dog": ["a fox-like dog.", "a small dog."],
                                "Animal_cat": ["a cat."]}), encoding="utf-8")
    rng = np.random.default_rng(0)
    table = {s: rng.standard_normal(8) for s in ["a fox-like dog.", "a small dog.", "a cat."]}
    encode = lambda texts: np.stack([table[s] for s in texts])   # noqa: E731
    w = description_weights(["Thu-dog_Shiba_Dog", "Animal_cat"], encode, path)
    unit = {s: v / np.linalg.norm(v) for s, v in table.items()}
    want0 = unit["a fox-like dog."] + unit["a small dog."]
    np.testing.assert_allclose(w[0], want0 / np.linalg.norm(want0), atol=1e-6)
    np.testing.assert_allclose(w[1], unit["a cat."], atol=1e-6)


@pytest.mark.parametrize("content, message", [
    ({"a": ["x"]}, "no descriptions for class 'b'"),
    ({"a": ["x"], "b": "x"}, "class 'b': descriptions must be a list"),
    ({"a": ["x"], "b": []}, "class 'b': the list of descriptions is empty"),
    ({"a": ["x"], "b": ["ok", 3]}, "class 'b': description 1 must be non-empty text"),
    (["a", "b"], "must be a JSON object"),
])
def test_description_file_errors_name_file_and_class(tmp_path, content, message):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(DescriptionError, match=str(path).replace("\\", "\\\\") + ": " + message):
        read_descriptions(path, ["a", "b"])
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(DescriptionError, match="not a readable JSON file"):
        read_descriptions(path, ["a", "b"])


# ------------------------------------------------------------- memory

# 100,000 x 512 float32 features (195 MiB) under a 4 GiB address-space limit.
# What takes memory does not grow with the iteration counts: the kNN graph is
# built once per head call, blockwise (64 MiB of similarities at a time), and
# every TransCLIP iteration (ZLaP CG step) reuses arrays of the same sizes,
# (N, C) assignments and (C, D) means (vectors of C + N): one outer iteration
# and 3 CG steps reach the same peak as 10 and 50.  What grows with the time
# is the graph: ~5e12 multiply-adds per build, run once here (ZLaP first, with
# k = 5; TransCLIP's 3-NN graph on the same features is its remembered prefix).
MEMORY_SCRIPT = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
import numpy as np
import jclip
from jclip.heads.transclip import TransCLIP
from jclip.heads.zlap import ZLaP
rng = np.random.default_rng(0)
n, d, c = 100_000, 512, 10
x = rng.standard_normal((n, d), dtype=np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
t = x[:c] + 0.1 * rng.standard_normal((c, d), dtype=np.float32)
t /= np.linalg.norm(t, axis=1, keepdims=True)
s = ZLaP(t, maxiter=3).fit().logits(x)
p = TransCLIP(t, outer_iters=1, inner_iters=2).fit().predict_proba(x)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("ok", p.shape, s.shape, p.dtype, s.dtype, bool(np.isfinite(p).all() and np.isfinite(s).all()),
      f"peak RSS {peak:.0f} MiB")
"""


@pytest.mark.slow
def test_transclip_and_zlap_on_100k_features_under_4_gib():
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], cwd=REPO, capture_output=True,
                         text=True, timeout=3000)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok (100000, 10) (100000, 10) float32 float32 True" in out.stdout
