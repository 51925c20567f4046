"""Few-shot heads: arithmetic against independent PyTorch code, learning on
generated clustered features, bad input, save/load."""
import json

import numpy as np
import pytest
import torch

import jclip  # noqa: F401  (jclip before jittor, always)
from jclip.heads import (HEADS, InMaP, LinearProbe, LPPlusPlus, TipAdapter, TipAdapterF,
                         ZeroShot, combine, l2_normalize, learn_proxies, load_head,
                         lpp_init_alpha, lpp_init_weights, lpp_lr_alpha, lpp_lr_w,
                         proxy_step, sinkhorn, topk_ids)
from jclip.metrics import accuracies, topk_accuracy



@pytest.fixture(autouse=True)
def float64_torch():
    """The reference computations run in float64; restore torch's default after,
    so other test files keep float32 references."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def unit(rng, *shape):
    return l2_normalize(rng.standard_normal(shape))


def make_task(seed, classes=20, dim=512, sub=16, sigma=0.9, text_noise=1.2, gap=3.0,
              shots=16, n_val=16, n_test=60, views=4, aug=0.6):
    """Clustered unit features with noisy text proxies, CLIP-like geometry.

    Every feature shares one direction (all CLIP images look alike); classes
    differ in a 16-d subspace where their means lie ~1 apart and each image
    scatters by ``sigma``, plus small isotropic noise; text proxies sit off
    the image cluster (the modality gap) with their class mean displaced by
    ``text_noise``, so zero-shot is imperfect and shots carry information.
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, sub + 2)))
    common, gap_dir, basis = q[:, 0], q[:, 1], q[:, 2:]
    means = rng.standard_normal((classes, sub))
    text = l2_normalize(common + 0.3 * (means + text_noise * rng.standard_normal(
        (classes, sub))) @ basis.T + gap * gap_dir)

    def sample(n):
        y = np.repeat(np.arange(classes), n)
        z = means[y] + sigma * rng.standard_normal((len(y), sub))
        x = l2_normalize(common + 0.3 * z @ basis.T +
                         0.5 * rng.standard_normal((len(y), dim)) / np.sqrt(dim))
        return x, y

    train, val, test = sample(shots), sample(n_val), sample(n_test)
    views = np.stack([l2_normalize(train[0] + aug * rng.standard_normal(train[0].shape)
                                   / np.sqrt(dim)) for _ in range(views)])
    return dict(train=train, val=val, test=test, text=text, views=views)


def first_shots(x, y, shots):
    idx = np.concatenate([np.flatnonzero(y == k)[:shots] for k in range(y.max() + 1)])
    return x[idx], y[idx], idx


def accuracy(head, x, y):
    return float((head.logits(x).argmax(1) == y).mean())


# ---------------------------------------------------------------- arithmetic

def small_problem(seed=0, n=24, c=4, d=16):
    rng = np.random.default_rng(seed)
    x = unit(rng, n, d)
    y = np.arange(n) % c
    t = unit(rng, c, d)
    return rng, x, y, t


def test_zero_shot_logits():
    rng, x, _, t = small_problem()
    want = 100 * torch.from_numpy(x) @ torch.from_numpy(t).T
    np.testing.assert_allclose(ZeroShot(t).fit().logits(x), want.numpy(), atol=1e-10)


def test_tip_adapter_logits_match_torch():
    rng, keys, labels, t = small_problem()
    x = unit(rng, 9, keys.shape[1])
    head = TipAdapter(t, init_beta=5.5, init_alpha=1.7).fit(keys, labels)
    fx, K, T = map(torch.from_numpy, (x, keys, t))
    V = torch.nn.functional.one_hot(torch.from_numpy(labels), 4).double()
    want = 100.0 * fx @ T.T + 1.7 * (-(5.5 - 5.5 * (fx @ K.T))).exp() @ V
    np.testing.assert_allclose(head.logits(x), want.numpy(), rtol=1e-5, atol=1e-5)


def test_tip_adapter_search_follows_official_grid_and_order():
    rng, keys, labels, t = small_problem(1)
    vx, vy = unit(rng, 30, keys.shape[1]), rng.integers(0, 4, 30)
    head = TipAdapter(t, beta_scale=7, beta_steps=10, alpha_scale=3, alpha_steps=5)
    head.fit(keys, labels, vx, vy)
    # brute force with the official loop: beta outer, alpha inner, strict >
    fx, K, T = map(torch.from_numpy, (vx, keys, t))
    V = torch.nn.functional.one_hot(torch.from_numpy(labels), 4).double()
    best = (0, 0, 0)
    for beta in [i * 6.9 / 10 + 0.1 for i in range(10)]:
        for alpha in [i * 2.9 / 5 + 0.1 for i in range(5)]:
            lg = 100.0 * fx @ T.T + alpha * (-(beta - beta * (fx @ K.T))).exp() @ V
            acc = (lg.argmax(1).numpy() == vy).mean()
            if acc > best[0]:
                best = (acc, beta, alpha)
    assert (head.val_accuracy_, head.beta_, head.alpha_) == pytest.approx(best)


def test_tip_adapter_f_training_matches_torch_adamw():
    rng, keys, labels, t = small_problem(2, n=40, c=5)
    views = np.stack([l2_normalize(keys + 0.1 * rng.standard_normal(keys.shape))
                      for _ in range(2)])
    head = TipAdapterF(t, epochs=3, batch_size=16, seed=7, init_beta=2.0, init_alpha=1.5)
    head.fit(keys, labels, train_features=views)
    # the official loop, same batch order
    K = torch.nn.Parameter(torch.from_numpy(keys.copy()))
    opt = torch.optim.AdamW([K], lr=1e-3, eps=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3 * 3)
    V = torch.nn.functional.one_hot(torch.from_numpy(labels), 5).double()
    T = torch.from_numpy(t)
    order_rng = np.random.default_rng(7)
    for epoch in range(3):
        order = order_rng.permutation(40)
        for s in range(0, 40, 16):
            idx = order[s:s + 16]
            fx = torch.from_numpy(views[epoch % 2][idx])
            logits = 100.0 * fx @ T.T + 1.5 * (-(2.0 - 2.0 * (fx @ K.T))).exp() @ V
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    np.testing.assert_allclose(head.keys_, K.detach().numpy(), atol=1e-5)
    assert not np.allclose(head.keys_, keys)


def test_lpp_initialisation_and_step_sizes_match_official_formulas():
    rng, x, y, t = small_problem(3, n=40, c=5, d=12)
    X, Y, T = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(t)
    one_hot = torch.nn.functional.one_hot(Y, 5).double()
    # official compute_centroids: one_hot^T F (a per-class SUM)
    np.testing.assert_allclose(lpp_init_weights(x, y, 5), (one_hot.T @ X).numpy(), atol=1e-12)
    shots = 8
    centroid_alpha = (one_hot * (X @ T.T) / one_hot.sum(0, keepdim=True)).sum(0)
    alpha = torch.mean(250 / shots * (centroid_alpha * shots))
    assert lpp_init_alpha(x, y, t) == pytest.approx(alpha.item(), rel=1e-6)
    lam = torch.linalg.eigvalsh(X.T @ X).max()
    assert lpp_lr_w(x) == pytest.approx((4 * 40 / lam).item(), rel=1e-6)
    lr_alpha = 40 / (torch.sum((X @ T.T) ** 2, dim=0).max() * 4)
    assert lpp_lr_alpha(x, t) == pytest.approx(lr_alpha.item(), rel=1e-6)


@pytest.mark.parametrize("accumulate", [True, False])
def test_lpp_training_matches_official_torch_loop(accumulate):
    rng, x, y, t = small_problem(4, n=40, c=5, d=12)
    vx, vy = unit(rng, 20, 12), np.arange(20) % 5
    epochs = 25
    head = LPPlusPlus(t, epochs=epochs, seed=3, accumulate_alpha_grad=accumulate)
    head.fit(x, y, vx, vy)
    X, Y, T = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(t)
    W = torch.nn.Parameter(torch.from_numpy(lpp_init_weights(x, y, 5)))
    b = torch.nn.Parameter(torch.from_numpy(
        np.random.default_rng(3).uniform(-1 / np.sqrt(12), 1 / np.sqrt(12), 5)))
    a = torch.full((5,), lpp_init_alpha(x, y, t), requires_grad=True)
    opt = torch.optim.SGD([W, b], lr=lpp_lr_w(x), momentum=0.9)
    lr_alpha = lpp_lr_alpha(x, t)
    best_acc, best = -1, None
    for epoch in range(epochs):
        loss = torch.nn.functional.cross_entropy(X @ W.T + b + a * (X @ T.T), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (epoch + 1) % 10 == 0:
            a.data -= lr_alpha * a.grad.data
        if not accumulate:
            a.grad = None
        with torch.no_grad():
            vl = torch.from_numpy(vx) @ W.T + b + a * (torch.from_numpy(vx) @ T.T)
            acc = (vl.argmax(1).numpy() == vy).mean()
        if acc >= best_acc:
            best_acc, best = acc, (W.detach().clone(), b.detach().clone(), a.detach().clone())
    for mine, ref in zip((head.weight_, head.bias_, head.alpha_), best):
        np.testing.assert_allclose(mine, ref.numpy(), rtol=1e-5, atol=1e-5)


def torch_softmax(z):
    return torch.nn.functional.softmax(z, dim=1)


def test_inmap_sinkhorn_matches_official():
    rng = np.random.default_rng(5)
    logits = rng.uniform(0.1, 0.4, (50, 7))
    for gamma in (0.0, 0.5):
        M = torch.from_numpy(logits)
        P = torch_softmax(M / 0.01) / 50
        if gamma > 0:
            q = P.sum(0, keepdim=True) ** gamma
            q /= q.sum()
        for _ in range(20):
            P /= P.sum(0, keepdim=True)
            P = P * q if gamma > 0 else P / 7
            P /= P.sum(1, keepdim=True)
            P /= 50
        np.testing.assert_allclose(sinkhorn(logits, 0.01, gamma, 20), (P * 50).numpy(),
                                   rtol=1e-5, atol=1e-8)


def test_inmap_sinkhorn_class_prior_sets_column_mass():
    rng = np.random.default_rng(6)
    prior = np.array([0.5, 0.2, 0.2, 0.1])
    p = sinkhorn(rng.uniform(0, 0.3, (400, 4)), iters=200, class_prior=prior)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(p.sum(0) / 400, prior, atol=1e-4)


def official_image_opt(feat, init_classifier, plabel, lr, iters, tau_i, alpha):
    """The official idstcv/InMaP image_opt, weights as columns (D, C)."""
    ins = feat.shape[0]
    val, idx = torch.max(plabel, dim=1)
    mask = val > alpha
    plabel = plabel.clone()
    plabel[mask, :] = 0
    plabel[mask, idx[mask]] = 1
    base = feat.T @ plabel
    classifier = init_classifier.clone()
    pre_norm = float("inf")
    for _ in range(iters):
        prob = torch_softmax(feat @ classifier / tau_i)
        grad = feat.T @ prob - base
        temp = torch.norm(grad)
        if temp > pre_norm:
            lr /= 2.0
        pre_norm = temp
        classifier -= (lr / (ins * tau_i)) * grad
        classifier = torch.nn.functional.normalize(classifier, dim=0)
    return classifier


def test_inmap_one_proxy_step_and_short_run_match_official():
    rng = np.random.default_rng(7)
    x, t = unit(rng, 60, 10), unit(rng, 6, 10)
    plabel = sinkhorn(x @ t.T)
    X, T, P = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(plabel)
    # one step, no hardening involved in the step itself
    target = P.T @ X
    mine, lr, norm = proxy_step(x, t, target.numpy(), 10.0, 0.04, np.inf)
    prob = torch_softmax(X @ T.T / 0.04)
    grad = prob.T @ X - target
    ref = torch.nn.functional.normalize(T - (10.0 / (60 * 0.04)) * grad, dim=1)
    np.testing.assert_allclose(mine, ref.numpy(), atol=1e-5)
    assert norm == pytest.approx(torch.norm(grad).item())
    # 30 steps through hardening and lr halving
    ref = official_image_opt(X, T.T, P, 10.0, 30, 0.04, 0.6).T
    np.testing.assert_allclose(learn_proxies(x, t, plabel, 10.0, 30, 0.04, 0.6),
                               ref.numpy(), atol=1e-5)


def test_inmap_snapshots_equal_shorter_runs():
    """One fit with snapshots serves a sweep over ``iters``: each snapshot is
    the official loop run for that many steps (lr halving included)."""
    rng = np.random.default_rng(3)
    x, t = unit(rng, 80, 12), unit(rng, 5, 12)
    head = InMaP(t, iters=40, snapshots=(10, 25, 40)).fit(x)
    assert sorted(head.snapshots_) == [10, 25, 40]
    plabel = torch.from_numpy(sinkhorn(x @ t.T))
    for n in (10, 25):
        ref = official_image_opt(torch.from_numpy(x), torch.from_numpy(t).T, plabel, 10.0, n, 0.04, 0.6).T
        np.testing.assert_allclose(head.snapshots_[n], ref.numpy(), atol=1e-5)
    np.testing.assert_array_equal(head.snapshots_[40], head.proxies_)
    # logits at a snapshot: the proxies kept at that step, over tau_i
    np.testing.assert_array_equal(head.logits(x, at_iter=25), (x @ head.snapshots_[25].T) / 0.04)
    np.testing.assert_array_equal(head.logits(x, at_iter=40), head.logits(x))
    with pytest.raises(ValueError, match="no proxies kept at step 30"):
        head.logits(x, at_iter=30)
    with pytest.raises(ValueError, match="snapshots"):
        InMaP(t, iters=5, snapshots=(6,)).fit(x)


def test_linear_probe_matches_sklearn_optimum():
    from sklearn.linear_model import LogisticRegression
    rng, x, y, _ = small_problem(8, n=60, c=3, d=8)
    head = LinearProbe(Cs=[3.0], gtol=1e-8).fit(x, y)
    ref = LogisticRegression(C=3.0, tol=1e-10, max_iter=10000).fit(x, y)
    np.testing.assert_allclose(head.weight_, ref.coef_, atol=1e-3)
    np.testing.assert_allclose(head.bias_, ref.intercept_, atol=1e-3)


@pytest.mark.parametrize("classes,c", [(2, 3.0), (2, 200.0), (5, 3.0), (5, 200.0)])
def test_linear_probe_is_the_objectives_optimum(classes, c):
    """The fitted (W, b) is a stationary point of C * sum CE + ||W||^2 / 2
    (b not penalised), its gradient taken by torch in float64: two classes
    (scikit-learn's one-row fit, mapped back) and several."""
    rng, x, y, _ = small_problem(12, n=60, c=classes, d=8)
    head = LinearProbe(Cs=[c], gtol=1e-9).fit(x, y)
    w = torch.tensor(head.weight_, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(head.bias_, dtype=torch.float64, requires_grad=True)
    z = torch.from_numpy(x) @ w.T + b
    loss = c * torch.nn.functional.cross_entropy(z, torch.from_numpy(y), reduction="sum") + 0.5 * (w * w).sum()
    loss.backward()
    scale = c * len(y)      # the gradient's size at W = 0
    assert float(w.grad.abs().max()) < 1e-5 * scale and float(b.grad.abs().max()) < 1e-5 * scale
    assert np.abs(head.weight_).max() > 0.1        # not the trivial point


def test_combine_weighted_logits_and_probs():
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    np.testing.assert_allclose(combine([a, b], [0.6, 0.4]), 0.6 * a + 0.4 * b)
    pa, pb = (torch_softmax(torch.from_numpy(z)).numpy() for z in (a, b))
    np.testing.assert_allclose(combine([a, b], [0.5, 0.5], mode="probs"), 0.5 * pa + 0.5 * pb)


def test_topk_is_best_first_and_distinct():
    rng = np.random.default_rng(10)
    logits = rng.standard_normal((30, 12))
    ids = topk_ids(logits, 5)
    np.testing.assert_array_equal(ids, np.argsort(-logits, axis=1, kind="stable")[:, :5])


# ---------------------------------------------------------------- learning

SEEDS = (0, 1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_lpp_accuracy_grows_with_shots(seed):
    task = make_task(seed)
    (x, y), (vx, vy), (tx, ty) = task["train"], task["val"], task["test"]
    accs = []
    for shots in (1, 2, 4, 8, 16):
        sx, sy, _ = first_shots(x, y, shots)
        svx, svy, _ = first_shots(vx, vy, shots)
        accs.append(accuracy(LPPlusPlus(task["text"], seed=0).fit(sx, sy, svx, svy), tx, ty))
    assert all(b > a for a, b in zip(accs, accs[1:])), accs
    zero_shot = float(((tx @ task["text"].T).argmax(1) == ty).mean())
    assert accs[-1] > zero_shot + 0.2


@pytest.mark.parametrize("seed", SEEDS)
def test_tip_adapter_beats_zero_shot_and_f_beats_tip(seed):
    task = make_task(seed)
    (x, y), (vx, vy), (tx, ty) = task["train"], task["val"], task["test"]
    sx, sy, idx = first_shots(x, y, 8)
    svx, svy, _ = first_shots(vx, vy, 8)
    grid = dict(alpha_scale=10, beta_scale=10, init_alpha=3.0)
    zero_shot = accuracy(ZeroShot(task["text"]).fit(), tx, ty)
    tip = accuracy(TipAdapter(task["text"], **grid).fit(sx, sy, svx, svy), tx, ty)
    tip_f = accuracy(TipAdapterF(task["text"], seed=0, **grid).fit(
        sx, sy, svx, svy, train_features=task["views"][:, idx]), tx, ty)
    assert zero_shot + 0.1 < tip <= tip_f, (zero_shot, tip, tip_f)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_inmap_beats_its_text_proxies(seed):
    # separable image clusters, badly placed text proxies: the transductive case
    task = make_task(seed, sigma=0.5, text_noise=1.2, n_test=50)
    tx, ty = task["test"]
    tx = tx.astype(np.float32)
    text = task["text"].astype(np.float32)
    zero_shot = float(((tx @ text.T).argmax(1) == ty).mean())
    acc = accuracy(InMaP(text).fit(tx), tx, ty)
    assert acc > zero_shot + 0.05, (zero_shot, acc)


@pytest.mark.slow
def test_linear_probe_learns_and_picks_c_on_validation():
    task = make_task(0)
    (x, y), (vx, vy), (tx, ty) = task["train"], task["val"], task["test"]
    head = LinearProbe(Cs=(0.1, 10.0, 1000.0)).fit(x, y, vx, vy)
    assert head.C_ in (0.1, 10.0, 1000.0)
    assert head.val_scores_[head.C_] == max(head.val_scores_.values())
    assert accuracy(head, tx, ty) > accuracy(ZeroShot(task["text"]).fit(), tx, ty) + 0.2


def test_same_seed_same_numbers():
    task = make_task(1)
    (x, y), (vx, vy) = task["train"], task["val"]
    sx, sy, idx = first_shots(x, y, 4)
    runs = [TipAdapterF(task["text"], seed=5, epochs=3).fit(sx, sy, vx, vy,
                                                         train_features=task["views"][:, idx])
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0].keys_, runs[1].keys_)
    runs = [LPPlusPlus(task["text"], seed=5, epochs=20).fit(sx, sy, vx, vy) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].weight_, runs[1].weight_)
    tx = task["test"][0]
    runs = [InMaP(task["text"], iters=50).fit(tx) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].proxies_, runs[1].proxies_)


# ---------------------------------------------------------------- save / load

def fitted_heads():
    rng, x, y, t = small_problem(11, n=40, c=4, d=16)
    vx, vy = unit(rng, 20, 16), np.arange(20) % 4
    return x, [
        ZeroShot(t).fit(),
        LinearProbe(Cs=[1.0]).fit(x, y),
        TipAdapter(t, beta_steps=5, alpha_steps=5).fit(x, y, vx, vy),
        TipAdapterF(t, epochs=2, beta_steps=5, alpha_steps=5).fit(x, y, vx, vy),
        LPPlusPlus(t, epochs=20).fit(x, y, vx, vy),
        InMaP(t, iters=20, snapshots=(5, 12)).fit(x),
    ]


def same_params(a, b):
    pa, pb = a.get_params(), b.get_params()
    assert pa.keys() == pb.keys()
    for k in pa:
        if isinstance(pa[k], np.ndarray) or isinstance(pb[k], np.ndarray):
            np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
        else:       # sequences come back as tuples
            norm = (lambda v: list(v) if isinstance(v, (list, tuple)) else v)
            assert norm(pa[k]) == norm(pb[k]), k


def test_save_load_round_trip(tmp_path):
    x, heads = fitted_heads()
    for i, head in enumerate(heads):
        path = tmp_path / f"head{i}.npz"
        head.save(path)
        fresh = type(head)().load(path)
        np.testing.assert_array_equal(fresh.logits(x), head.logits(x))
        np.testing.assert_array_equal(fresh.predict_topk(x, 3), head.predict_topk(x, 3))
        same_params(fresh, head)
        loaded = load_head(path)               # the class is read from the file
        assert type(loaded) is type(head)
        np.testing.assert_array_equal(loaded.logits(x), head.logits(x))
        assert sorted(p.name for p in tmp_path.iterdir()) == \
            sorted(f"head{j}.npz" for j in range(i + 1))  # no temp files left
    inmap = InMaP().load(tmp_path / "head5.npz")
    np.testing.assert_array_equal(inmap.logits(x, at_iter=5), heads[5].logits(x, at_iter=5))
    assert LPPlusPlus().load(tmp_path / "head4.npz").val_accuracy_ == heads[4].val_accuracy_


def test_load_refuses_old_foreign_and_mismatched_files(tmp_path):
    x, heads = fitted_heads()
    lpp = heads[4]
    # the layout LPPlusPlus.save wrote before the estimator API
    old = tmp_path / "old_lpp.npz"
    np.savez(old, weight=lpp.weight_, bias=lpp.bias_, alpha=lpp.alpha_, text_weights=lpp.text_weights_)
    with pytest.raises(ValueError, match=r"old_lpp\.npz: not a jclip head file.*retrained"):
        LPPlusPlus().load(old)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match=r"junk\.npz: not a jclip head file"):
        LPPlusPlus().load(junk)
    lpp.save(tmp_path / "lpp.npz")
    with pytest.raises(ValueError, match=r"lpp\.npz: holds a LPPlusPlus head, not a TipAdapter"):
        TipAdapter().load(tmp_path / "lpp.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        LPPlusPlus().load(tmp_path / "missing.npz")
    # another format version
    with np.load(tmp_path / "lpp.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["__meta__"]))
    arrays["__meta__"] = np.array(json.dumps(dict(meta, version=1)))
    np.savez(tmp_path / "v1.npz", **arrays)
    with pytest.raises(ValueError, match=r"v1\.npz: head file format version 1"):
        load_head(tmp_path / "v1.npz")


def test_unfitted_head_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        LPPlusPlus().logits(np.eye(3))
    with pytest.raises(RuntimeError, match="not fitted"):
        ZeroShot(np.eye(3)).save("never.npz")


# ---------------------------------------------------------------- estimator API

NUMPY_HEADS = [name for name, spec in HEADS.items() if not spec.needs_model]


@pytest.mark.parametrize("name", NUMPY_HEADS)
def test_constructor_stores_params_unchanged_and_fit_validates(name):
    spec = HEADS[name]
    defaults = spec.defaults()
    assert set(defaults) == set(spec.param_names())      # every default in the signature
    assert ("text_weights" in defaults) == spec.needs_text
    # odd values are stored as given (no conversion, no checks) ...
    odd = {k: ("bad" if k != "text_weights" else [[2.0]]) for k in defaults}
    head = spec.cls(**odd)
    assert all(head.get_params()[k] is v for k, v in odd.items())
    # ... and refused by fit, naming the hyper-parameter
    _, x, y, t = small_problem(14, n=20, c=4, d=8)
    with pytest.raises(ValueError):
        head.fit(x, y)
    good = spec.cls(**({"text_weights": t} if spec.needs_text else {}), **spec.no_val_params)
    assert good.fit(x, y) is good
    fitted = [k for k in vars(good) if k not in defaults]
    assert fitted and all(k.endswith("_") for k in fitted), fitted
    assert good.set_params(seed=3).get_params()["seed"] == 3 if "seed" in defaults else True
    with pytest.raises(ValueError, match="no hyper-parameter 'nope'"):
        good.set_params(nope=1)
    assert spec.cls.__name__ in repr(good)


def test_hyper_parameter_errors_name_the_parameter():
    _, x, y, t = small_problem(15, n=20, c=4, d=8)
    with pytest.raises(ValueError, match="epochs must be an integer"):
        LPPlusPlus(t, epochs=2.5).fit(x, y)
    with pytest.raises(ValueError, match="tau_i must be > 0"):
        InMaP(t, tau_i=0).fit(x)
    with pytest.raises(ValueError, match="needs text_weights"):
        TipAdapter().fit(x, y)
    with pytest.raises(ValueError, match="needs labels"):
        LinearProbe(Cs=[1.0]).fit(x)


def test_inmap_ignores_labels_and_zero_shot_checks_width():
    _, x, y, t = small_problem(16, n=30, c=3, d=8)
    np.testing.assert_array_equal(InMaP(t, iters=10).fit(x, y).logits(x),
                                  InMaP(t, iters=10).fit(x).logits(x))
    with pytest.raises(ValueError, match="dimension 5, expected 8"):
        ZeroShot(t).fit(x[:, :5])


# ---------------------------------------------------------------- metrics

def test_topk_accuracy_matches_a_brute_force_count():
    rng = np.random.default_rng(17)
    logits = rng.standard_normal((200, 12))
    labels = rng.integers(0, 12, 200)
    order = np.argsort(-logits, axis=1, kind="stable")
    for k in (1, 3, 5):
        want = np.mean([labels[i] in order[i, :k] for i in range(200)])
        assert topk_accuracy(logits, labels, k) == want
        assert topk_accuracy(topk_ids(logits, k), labels, k) == want    # ranked ids
        assert 0.0 < want < 1.0                                         # a real test
    # rank 5 counts for top-5, rank 6 does not
    row = np.arange(12, 0, -1, dtype=float)[None]
    assert topk_accuracy(row, np.array([4]), 5) == 1.0
    assert topk_accuracy(row, np.array([5]), 5) == 0.0
    # ties go to the lower id, as argmax
    assert topk_accuracy(np.zeros((1, 4)), np.array([0]), 1) == 1.0
    assert topk_accuracy(np.zeros((1, 4)), np.array([1]), 1) == 0.0
    acc = accuracies(logits, labels, percent=True, ndigits=2)
    assert acc["n"] == 200 and acc["top1"] == round(100 * topk_accuracy(logits, labels), 2)
    assert accuracies(logits[:0], labels[:0]) == {"n": 0, "top1": None, "top5": None}
    with pytest.raises(ValueError, match="at least 5 ranked ids"):
        topk_accuracy(topk_ids(logits, 3), labels, 5)
    with pytest.raises(ValueError, match="labels must be 1-D of length 200"):
        topk_accuracy(logits, labels[:5], 1)


# ---------------------------------------------------------------- bad input

@pytest.fixture
def problem():
    return small_problem(12, n=20, c=4, d=8)


def with_nan(x):
    x = x.copy()
    x[3, 2] = np.nan
    return x


@pytest.mark.parametrize("make", [
    lambda t: LPPlusPlus(t, epochs=2),
    lambda t: TipAdapter(t),
    lambda t: TipAdapterF(t, epochs=1),
    lambda t: LinearProbe(Cs=[1.0], num_classes=4),
])
def test_bad_training_input(problem, make):
    _, x, y, t = problem
    with pytest.raises(ValueError, match="NaN"):
        make(t).fit(with_nan(x), y)
    with pytest.raises(ValueError, match="dimension|2-D"):
        make(t).fit(x[:, :5] if not isinstance(make(t), LinearProbe) else x[:, :, None], y)
    with pytest.raises(ValueError, match="normalised"):
        make(t).fit(2 * x, y)
    with pytest.raises(ValueError, match="no shots"):
        make(t).fit(x, np.where(y == 2, 1, y))
    with pytest.raises(ValueError, match="out of range"):
        make(t).fit(x, np.where(y == 3, 9, y))
    with pytest.raises(ValueError, match="labels"):
        make(t).fit(x, y[:-1])


def test_bad_inference_and_text_input(problem):
    _, x, y, t = problem
    head = LPPlusPlus(t, epochs=2).fit(x, y)
    with pytest.raises(ValueError, match="dimension 5, expected 8"):
        head.logits(x[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        head.predict_topk(with_nan(x))
    with pytest.raises(ValueError, match="k must be"):
        head.predict_topk(x, k=9)
    with pytest.raises(ValueError, match="text_weights"):
        InMaP(with_nan(t), iters=2).fit(x)
    with pytest.raises(ValueError, match="dimension"):
        InMaP(l2_normalize(t[:, :5]), iters=2).fit(x)
    with pytest.raises(ValueError, match="val_labels out of range"):
        TipAdapter(t).fit(x, y, x, np.full(len(y), 7))
    with pytest.raises(ValueError, match="both val"):
        LPPlusPlus(t, epochs=2).fit(x, y, val_features=x)
    with pytest.raises(ValueError, match="class_prior"):
        sinkhorn(x @ t.T, class_prior=[1.0, 2.0])
    with pytest.raises(ValueError, match="one shape"):
        combine([np.zeros((3, 4)), np.zeros((3, 5))])
    with pytest.raises(ValueError, match="weights"):
        combine([np.zeros((3, 4))] * 2, [1.0])


# ---------------------------------------------------------------- templates

def test_class_names_and_templates():
    from jclip.heads import (IMAGENET_7_TEMPLATES, IMAGENET_80_TEMPLATES, class_prompts,
                             clean_class_name)
    assert clean_class_name("Thu-dog_Shiba_Dog") == "Shiba Dog"
    assert clean_class_name("Caltech-101_car_side") == "car side"
    assert clean_class_name("Stanford-Cars_Audi_S4_Sedan_2012") == "Audi S4 Sedan 2012"
    assert len(IMAGENET_80_TEMPLATES) == len(set(IMAGENET_80_TEMPLATES)) == 80
    assert set(IMAGENET_7_TEMPLATES) <= set(IMAGENET_80_TEMPLATES)
    assert class_prompts("Food-101_apple_pie", "single") == ["a photo of a apple pie, a type of food."]
    assert class_prompts("Caltech-101_car_side", "single") == ["a photo of a car side."]
    assert class_prompts("Thu-dog_Shiba_Dog", "imagenet7", domain_suffix=False)[4] == \
        "a Shiba Dog in a video game."
    with pytest.raises(ValueError, match="unknown template set"):
        class_prompts("x", "imagenet81")


def test_text_classifier_weights_average_normalised_embeddings():
    from jclip.heads import text_classifier_weights
    rng = np.random.default_rng(13)
    table = {}

    def encode(texts):
        return np.stack([table.setdefault(s, rng.standard_normal(6) * rng.uniform(1, 9))
                         for s in texts])

    w = text_classifier_weights(["Animal_cat", "Animal_dog"], encode, templates="imagenet7")
    for k, name in enumerate(["Animal_cat", "Animal_dog"]):
        from jclip.heads import class_prompts
        e = torch.from_numpy(encode(class_prompts(name, "imagenet7")))
        e = torch.nn.functional.normalize(e, dim=1).mean(0)
        np.testing.assert_allclose(w[k], torch.nn.functional.normalize(e, dim=0).numpy(),
                                   atol=1e-6)


def test_every_hyper_parameter_refuses_a_wrong_kind_with_a_value_error():
    # null, text, a number where a list belongs, nested lists, objects: each
    # one ValueError naming the parameter, never a TypeError from inside a head
    from jclip.heads import HEADS
    bad_values = (None, "x", 3, [], [[1]], {"a": 1}, ["a"], [True])
    checked = 0
    for name, spec in HEADS.items():
        if spec.needs_model:          # their constructors need a CLIP; the same base check serves them
            continue
        cls = spec.cls
        cls().check_params()          # every default passes
        for param in cls.param_defaults():
            for bad in bad_values:
                try:
                    cls(**{param: bad}).check_params()
                except ValueError as e:
                    assert param in str(e), (name, param, e)
                checked += 1
    assert checked > 100
