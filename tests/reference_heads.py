"""PyTorch float64 references for TransCLIP, ZLaP, GDA, APE and ProKeR.

Each follows the steps of the official code (dense matrices, torch.topk,
the official loops and tensor aliasing), written for these tests; jclip's
heads (numpy, blockwise, sparse, closed forms) are checked against them.
Every constant the official code hard-codes is an argument here, so a test
can plant a wrong one.
"""
import numpy as np
import torch
import torch.nn.functional as F


def _t(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


# ----------------------------------------------------------------- TransCLIP

def transclip(query, text, support=None, support_labels=None, val=None, val_labels=None,
              init_prototypes=None, init_predictions=None, temperature=50.0, shot_weight=50.0,
              n_neighbors=3, max_iter=10, inner=5, n_confident=8, logit_scale=100.0,
              gammas=(0.002, 0.01, 0.02, 0.2), lambda_fs=0.5, support_first=False):
    """TransCLIP_solver's steps; returns (z at the chosen gamma, gamma)."""
    q = _t(query)
    k_cls = text.shape[0]
    d = q.shape[1]
    n = q.shape[0]
    few = support is not None
    if few:
        s = _t(support)
        sl = torch.as_tensor(support_labels)
    if init_prototypes is not None:
        y_hat = logit_scale * q @ _t(init_prototypes).T
    elif init_predictions is not None:
        y_hat = _t(init_predictions)
    else:
        y_hat = logit_scale * q @ _t(text).T
    if init_predictions is not None:
        z = y_hat                                   # one tensor, as init_z(softmax=False)
    else:
        y_hat, z = F.softmax(y_hat, dim=1), F.softmax(y_hat, dim=1)
    if few:
        lam, gamma_list = lambda_fs, list(gammas)
        mu = F.one_hot(sl, k_cls).double().T @ s
    else:
        lam, gamma_list = 1.0, [0.0]
        mu = torch.zeros(k_cls, d, dtype=torch.float64)
        _, top = torch.topk(z, k=n_confident, dim=0)
        mask = torch.zeros_like(z).scatter_(0, top, 1)
        for c in range(k_cls):
            rows = mask[:, c].nonzero().squeeze(1)
            mu[c] = (q[rows] * (z * mask)[rows, c].unsqueeze(1))[:n_confident].mean(dim=0)
    mu = mu / mu.norm(dim=-1, keepdim=True)
    std = torch.ones(d, dtype=torch.float64) / d
    # affinity: rows [shots; queries], columns queries; drop each row's best
    aff = torch.cat((s @ q.T, q @ q.T)) if few else q @ q.T
    knn = aff.topk(n_neighbors + 1, -1).indices[:, 1:]
    w = torch.zeros_like(aff)
    rows = torch.arange(aff.shape[0]).unsqueeze(1).repeat(1, n_neighbors)
    w[rows, knn] = aff[rows, knn]
    if few:
        v_nn = torch.argmax(_t(val) @ q.T, dim=1) if val is not None else None
        one_hot = F.one_hot(sl, k_cls).double()

    def update_z(lik, z):
        if few:
            z = torch.cat((one_hot, z.clone())) if support_first else torch.cat((z.clone(), one_hot))
        for _ in range(inner):
            zq = z[len(one_hot):] if (few and support_first) else z[0:n]
            own = (w @ zq)[len(one_hot):] if (few and support_first) else (w @ zq)[0:n]
            a = lik.clone() + (temperature / (n_neighbors * 2)) * (w.T @ z + own)
            a -= torch.max(a, dim=1, keepdim=True)[0]
            a = (y_hat ** lam) * torch.exp(1 / temperature * a)
            if few and support_first:
                z[len(one_hot):] = a / torch.sum(a, dim=1, keepdim=True)
            else:
                z[0:n] = a / torch.sum(a, dim=1, keepdim=True)
        return z[len(one_hot):] if (few and support_first) else z[0:n]

    best_val, best = -1, None
    for gamma in gamma_list:
        for it in range(max_iter + 1):
            lik = -0.5 * torch.einsum("ijk,ijk->ij", (q[:, None, :] - mu[None]) ** 2,
                                      1 / std[None, None, :].expand(n, k_cls, d))
            z = update_z(lik, z)
            if it == max_iter:
                if few and v_nn is not None:
                    acc = (z[v_nn].argmax(1) == torch.as_tensor(val_labels)).double().mean().item()
                    if acc > best_val:
                        best_val, best = acc, (z.clone(), gamma)
                break
            new_mu = (1 / n) * z.T @ q
            den = (1 / n) * z.sum(0).unsqueeze(-1)
            if few:
                new_mu = new_mu + (gamma * shot_weight / len(s)) * one_hot.T @ s
                den = den + gamma * shot_weight / len(s) * one_hot.sum(0).unsqueeze(-1)
            mu = new_mu / den
            mu = mu / mu.norm(dim=-1, keepdim=True)
            std_new = (1 / n) * torch.einsum("ij,ijk->k", z, (q[:, None, :] - mu[None]) ** 2)
            if few and gamma > 0:
                std_new = std_new + (gamma * shot_weight / len(s)) * torch.einsum(
                    "ij,ijk->k", one_hot, (s[:, None, :] - mu[None]) ** 2)
                std_new /= (1 / n * z.sum() + gamma * shot_weight / len(s) * one_hot.sum())
            else:
                std_new /= (1 / n * z.sum())
            std = std_new
    if best is None:
        best = (z, gamma_list[-1])
    return best[0].numpy(), best[1]


# ----------------------------------------------------------------- ZLaP

def zlap(features, clf, k=5, gamma=5.0, alpha=0.3, scale_sim=False):
    """do_transductive_lp's steps with an exact dense solve; returns scores (N, C)."""
    x, c = _t(features), _t(clf)
    nc, n = c.shape[0], x.shape[0]
    s_im, knn_im = (x @ x.T).topk(min(k, n), dim=1)
    s_tx, knn_tx = (x @ c.T).topk(min(k, nc), dim=1)
    knn = torch.cat((knn_im + nc, knn_tx), dim=1)
    sim = torch.cat((s_im, s_tx), dim=1)
    if scale_sim:
        sim = (sim - sim.min()) / (sim.max() - sim.min())
    sim[sim < 0] = 0
    mask = knn < nc
    sim[mask] = sim[mask] ** gamma
    size = nc + n
    w = torch.zeros(size, size, dtype=torch.float64)
    rows = (torch.arange(n) + nc).unsqueeze(1).expand_as(knn)
    w[rows.reshape(-1), knn.reshape(-1)] += sim.reshape(-1)
    w = w + w.T
    w = w - torch.diag(torch.diag(w))
    deg = w.sum(1)
    deg[deg == 0] = 1
    dm = torch.diag(1 / deg.sqrt())
    lap = torch.eye(size, dtype=torch.float64) - alpha * dm @ w @ dm
    out = torch.linalg.solve(lap, torch.eye(size, dtype=torch.float64)[:, :nc])
    return out[nc:].numpy()


# ----------------------------------------------------------------- GDA

def gda(shots, labels, text, val, val_labels, test, alphas=(0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0),
        shrink=1.0):
    """run()'s steps of main_few_shots.py; returns (test logits, alpha)."""
    vecs, y, cw = _t(shots), torch.as_tensor(labels), _t(text).T
    k = cw.shape[1]
    mus = torch.cat([vecs[y == i].mean(dim=0, keepdim=True) for i in range(k)])
    center = torch.cat([vecs[y == i] - mus[i].unsqueeze(0) for i in range(k)])
    d = center.shape[1]
    cov_inv = d * torch.linalg.pinv((center.shape[0] - 1) * center.T.cov()
                                    + shrink * center.T.cov().trace() * torch.eye(d, dtype=torch.float64))
    ps = torch.ones(k, dtype=torch.float64) / k
    w = torch.einsum("nd,dc->cn", mus, cov_inv)
    b = ps.log() - torch.einsum("nd,dc,nc->n", mus, cov_inv, mus) / 2
    best_acc, best_alpha = 0, 0.1
    if val is not None:
        vx, vy = _t(val), torch.as_tensor(val_labels)
        for alpha in alphas:
            acc = ((100.0 * vx @ cw + alpha * (vx @ w + b)).argmax(1) == vy).double().mean().item()
            if acc > best_acc:
                best_acc, best_alpha = acc, alpha
    tx = _t(test)
    return (100.0 * tx @ cw + best_alpha * (tx @ w + b)).numpy(), best_alpha


# ----------------------------------------------------------------- APE

def ape(shots_by_class, text, val, val_labels, test, feat_num, w=(0.7, 0.3), scale=(7, 7, 0.5),
        step=(200, 20, 5), init=(1.0, 2.0, 0.1), kl_eps=1e-6):
    """APE()'s steps (shots_by_class (C, M, D)); returns (test logits, (beta, alpha, gamma))."""
    cache = _t(shots_by_class)
    cw = _t(text).T                                   # (D, C)
    d, k = cw.shape
    feats = torch.cat([cw.T.unsqueeze(1), cache], dim=1)
    m = feats.shape[1]
    sim_sum, count = torch.zeros(d, dtype=torch.float64), 0
    for i in range(k):
        for j in range(k):
            if i != j:
                for a in range(m):
                    for b in range(m):
                        sim_sum += feats[i, a] * feats[j, b]
                        count += 1
    crit = -w[0] * sim_sum / count + w[1] * torch.var(cw, dim=1)
    idx = torch.topk(crit, k=feat_num).indices
    keys = cache.reshape(-1, d)
    values = F.one_hot(torch.arange(k).repeat_interleave(cache.shape[1]), k).double()
    nw = cw[idx, :] / cw[idx, :].norm(dim=0, keepdim=True)
    nk = keys[:, idx] / keys[:, idx].norm(dim=-1, keepdim=True)
    key_logits = (nk @ nw).softmax(1)
    div = torch.sum(values * torch.log2((values + kl_eps) / (key_logits + kl_eps)), dim=1)[:, None]

    def run(x, beta, alpha, gamma):
        nx = x[:, idx] / x[:, idx].norm(dim=-1, keepdim=True)
        soft = values * (div * gamma).exp()
        return 100.0 * x @ cw + ((-1) * (beta - beta * (nx @ nk.T))).exp() @ soft * alpha

    best = init
    if val is not None:
        vx, vy = _t(val), torch.as_tensor(val_labels)
        best_acc, best = 0, (0, 0, 0)
        for beta in [i * (scale[0] - 0.1) / step[0] + 0.1 for i in range(step[0])]:
            for alpha in [i * (scale[1] - 0.1) / step[1] + 0.1 for i in range(step[1])]:
                for gamma in [i * scale[2] / step[2] for i in range(step[2])]:
                    acc = (run(vx, beta, alpha, gamma).argmax(1) == vy).double().mean().item()
                    if acc > best_acc:
                        best_acc, best = acc, (beta, alpha, gamma)
    return run(_t(test), *best).numpy(), best


# ----------------------------------------------------------------- ProKeR

def proker(shots, labels, text, val, val_labels, test, beta_grid=(0.5, 3.0, 20),
           lmbda_grid=(0.001, 1.0, 10), fixed=None):
    """The training-free ProKeR's steps; returns (test logits, (beta, lambda))."""
    vecs, y, cw = _t(shots), torch.as_tensor(labels), _t(text).T
    cache = F.one_hot(y, cw.shape[1]).double()

    def kernel(a, b, beta):
        return (-beta * (1 - a @ b.T)).exp()

    residual = cache - vecs @ cw
    if fixed is None:
        vx, vy = _t(val), torch.as_tensor(val_labels)
        best_acc = 0
        for beta in torch.linspace(*beta_grid[:2], beta_grid[2], dtype=torch.float64):
            kss, kxs = kernel(vecs, vecs, beta), kernel(vx, vecs, beta)
            for lm in torch.linspace(*lmbda_grid[:2], lmbda_grid[2], dtype=torch.float64):
                a = torch.linalg.solve(1 / lm * kss + torch.eye(len(vecs), dtype=torch.float64), residual)
                acc = ((vx @ cw + kxs @ a).argmax(1) == vy).double().mean().item()
                if acc > best_acc:
                    best_acc, fixed = acc, (beta.item(), lm.item())
    beta, lm = fixed
    a = torch.linalg.solve(1 / lm * kernel(vecs, vecs, beta) + torch.eye(len(vecs), dtype=torch.float64),
                           residual)
    tx = _t(test)
    return (tx @ cw + kernel(tx, vecs, beta) @ a).numpy(), (beta, lm)
