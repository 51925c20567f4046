"""CoOp and CoCoOp prompt learning through jclip's frozen text encoder.

CoOp (Zhou et al., IJCV'22) learns M context vectors that replace the words
of a hand-made prompt: [SOS][ctx_1..ctx_M][class tokens][.][EOS].  CoCoOp
(CVPR'22) adds pi(x) = Linear(d, d/16) -> ReLU -> Linear(d/16, width) of
the normalised image feature to every context vector, so each image gets its
own prompts: one text-encoder pass per (image, class) pair.

Only the learner's parameters train (CLIP is frozen; gradients are asked for
the learner's parameters alone) and only they are saved, with the backbone's
name and SHA-256.  Because the image tower is frozen and the official
trainers use no augmentation at test time, training runs on cached,
normalised image features.

Memory stays bounded for any number of classes: the text encoder sees at most
``chunk_size`` prompts at once.  When a batch needs more, the step is done in
two passes - logits for all blocks without a graph, then per block a second
forward with a graph and the backward of sum(dLoss/dlogits * logits) - which
gives exactly the full-batch gradient.  Prompts are cut after the last EOT
(exact, the mask is causal), so a pass costs ~10-20 positions, not 77.
"""
import hashlib
import json
import math
import os
from collections import OrderedDict

import numpy as np
import jittor as jt
from tqdm import tqdm

from ..io import atomic_save_npz
from .base import l2_normalize
from .templates import clean_class_name
from ..models.clip import normalize
from ..models.tokenizer import get_tokenizer, tokenize

POSITIONS = ("end", "middle", "front")
FORMAT_VERSION = 1


def backbone_identity(model):
    """(name, sha256) of the CLIP the prompts were learned on.  A model not
    loaded from a file is identified by a hash of its text-encoder weights."""
    name = getattr(model, "name", None) or "unnamed"
    if getattr(model, "_weights_sha256", None) or getattr(model, "weights_path", None):
        from ..models.load import weights_sha256
        return name, weights_sha256(model)
    h = hashlib.sha256()
    for key, var in sorted(model.state_dict().items()):
        if not key.startswith("visual."):
            h.update(key.encode())
            h.update(np.ascontiguousarray(var.numpy(), dtype=np.float32).tobytes())
    return name, "text-weights:" + h.hexdigest()


class PromptTable:
    """Token embeddings of "X .. X <class>." for a list of class names and,
    per class and position, where each embedding comes from: a constant
    (SOS, class tokens, '.', EOS) or context vector j, arranged for the
    class-token position."""

    def __init__(self, model, class_names, n_ctx, position="end"):
        if position not in POSITIONS:
            raise ValueError(f"class token position must be one of {POSITIONS}, not {position!r}")
        names = [clean_class_name(n) for n in class_names]
        if not names:
            raise ValueError("class_names is empty")
        tok = get_tokenizer()
        name_lens = [len(tok.encode(n)) for n in names]
        prompts = [" ".join(["X"] * n_ctx) + " " + n + "." for n in names]
        tokens = tokenize(prompts, model.context_length)
        self.eot = tokens.argmax(axis=1)
        length = int(self.eot.max()) + 1
        tokens = tokens[:, :length]
        c = len(names)
        with jt.no_grad():
            emb = model.token_embedding(jt.array(tokens.astype(np.int32))).numpy()
        self.const = emb.reshape(c * length, -1)            # (C*L, width)
        self.num_classes, self.length, self.n_ctx = c, length, n_ctx
        self.names = names

        # source[c, p] >= 0: row of ``const``; < 0: context vector -1 - source.
        source = np.empty((c, length), dtype=np.int64)
        for i, nl in enumerate(name_lens):
            rows = i * length + np.arange(length)
            ctx = -1 - np.arange(n_ctx)
            cls = rows[1 + n_ctx:1 + n_ctx + nl]
            rest = rows[1 + n_ctx + nl:]
            if position == "end":
                order = [rows[:1], ctx, cls, rest]
            elif position == "front":
                order = [rows[:1], cls, ctx, rest]
            else:
                half = n_ctx // 2
                order = [rows[:1], ctx[:half], cls, ctx[half:], rest]
            source[i] = np.concatenate(order)
        self.source = source

    def assemble(self, ctx, ctx_ids, class_ids):
        """(P, L, width) prompt embeddings for pairs (ctx_ids[p], class_ids[p]).

        ctx: (K, M, width) Var of context sets; ctx_ids index its first axis.
        One gather over [constants; context rows], so gradients flow to ctx.
        """
        k = ctx.shape[0]
        table = jt.concat([jt.array(self.const).stop_grad(), ctx.reshape((k * self.n_ctx, -1))], 0)
        src = self.source[class_ids]                          # (P, L)
        ctx_rows = self.const.shape[0] + np.asarray(ctx_ids)[:, None] * self.n_ctx + (-1 - src)
        idx = np.where(src >= 0, src, ctx_rows).reshape(-1).astype(np.int32)
        return table[jt.array(idx)].reshape((len(class_ids), self.length, -1))

    def encode(self, model, ctx, ctx_ids, class_ids):
        """Normalised (P, D) text features of the assembled prompts."""
        x = self.assemble(ctx, ctx_ids, class_ids)
        return normalize(model.encode_token_embeddings(x, self.eot[class_ids]))


def _uniform(rng, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)             # torch nn.Linear's default init
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def cosine_lr(epoch, epochs, lr, warmup_epochs=1, warmup_lr=1e-5):
    """Dassl's schedule: constant ``warmup_lr`` for the warm-up epochs, then
    cosine annealing over ``epochs`` evaluated at the epoch index."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))


class CoOp:
    """CoOp prompt learner.

    n_ctx / ctx_init: ``ctx_init`` words ("a photo of a") initialise the
    context from their token embeddings (M = their token count); None =
    random N(0, 0.02) context of ``n_ctx`` vectors.  class_specific: one
    context per class (cannot transfer to unseen classes).
    """

    method = "coop"

    def __init__(self, model, class_names, n_ctx=4, ctx_init="a photo of a",
                 class_specific=False, position="end", chunk_size=512, seed=0):
        self.model, self.class_names = model, [str(n) for n in class_names]
        self.class_specific, self.position = bool(class_specific), position
        self.ctx_init, self.chunk_size, self.seed = ctx_init, int(chunk_size), seed
        self.logit_scale = float(np.exp(model.logit_scale.numpy().reshape(-1)[0]))
        self.width = model.token_embedding.weight.shape[1]
        self.embed_dim = model.text_projection.shape[1]
        rng = np.random.default_rng(seed)
        if ctx_init:
            ids = tokenize([ctx_init], model.context_length)[0]
            n_ctx = int(ids.argmax()) - 1
            with jt.no_grad():
                init = model.token_embedding(jt.array(ids[1:1 + n_ctx].astype(np.int32))).numpy()
        else:
            init = rng.normal(0.0, 0.02, size=(n_ctx, self.width)).astype(np.float32)
        if n_ctx < 1:
            raise ValueError("the context needs at least one vector")
        self.n_ctx = n_ctx
        k = len(self.class_names) if self.class_specific else 1
        self.params = OrderedDict(ctx=np.repeat(init[None].astype(np.float32), k, axis=0))
        self._init_extra(rng)
        self.table = PromptTable(model, self.class_names, n_ctx, position)
        self.history_ = []

    def _init_extra(self, rng):
        pass

    # -- forward -------------------------------------------------------------
    def _blocks(self, batch, num_classes):
        """(image ids, class ids) blocks covering batch x classes, each needing
        at most chunk_size text sequences (CoOp: text is shared by images)."""
        step = max(1, self.chunk_size)
        return [(np.arange(batch), np.arange(c, min(c + step, num_classes)))
                for c in range(0, num_classes, step)]

    def _block_logits(self, p, image_features, img_ids, cls_ids, table):
        """(len(img_ids), len(cls_ids)) logits as a Var; p: dict of Vars."""
        ctx = p["ctx"]
        ctx_ids = cls_ids if self.class_specific else np.zeros(len(cls_ids), np.int64)
        text = table.encode(self.model, ctx, ctx_ids, cls_ids)
        return self.logit_scale * jt.matmul(image_features[img_ids], text.transpose())

    def _vars(self):
        return OrderedDict((k, jt.array(v)) for k, v in self.params.items())

    def _table_for(self, class_names):
        if class_names is None or [str(n) for n in class_names] == self.class_names:
            return self.table
        if self.class_specific:
            raise ValueError("class-specific contexts exist only for the training classes")
        return PromptTable(self.model, class_names, self.n_ctx, self.position)

    def logits(self, features, class_names=None, batch_size=64, progress=False):
        """(N, C) numpy logits of normalised image features against
        ``class_names`` (default: the training classes)."""
        x = l2_normalize(np.asarray(features, dtype=np.float32))
        table = self._table_for(class_names)
        out = np.empty((len(x), table.num_classes), np.float32)
        with jt.no_grad():
            p = self._vars()
            starts = range(0, len(x), batch_size)
            for s in tqdm(starts, desc=f"{self.method} logits", disable=not progress):
                xb = jt.array(x[s:s + batch_size])
                for img, cls in self._blocks(len(xb), table.num_classes):
                    out[s + img[:, None], cls[None, :]] = self._block_logits(p, xb, img, cls, table).numpy()
                jt.gc()
        return out

    def predict_topk(self, features, k=5, class_names=None):
        return np.argsort(-self.logits(features, class_names), axis=1, kind="stable")[:, :k]

    # -- training ------------------------------------------------------------
    def loss_and_grads(self, features, labels):
        """(mean cross-entropy, {name: gradient ndarray}, logits) of one batch."""
        x = jt.array(l2_normalize(np.asarray(features, dtype=np.float32)))
        y = np.asarray(labels, dtype=np.int64)
        blocks = self._blocks(len(y), self.table.num_classes)
        p = self._vars()
        names = list(p)
        if len(blocks) == 1:
            img, cls = blocks[0]
            logits = self._block_logits(p, x, img, cls, self.table)
            loss = jt.nn.cross_entropy_loss(logits, jt.array(y.astype(np.int32)))
            grads = jt.grad(loss, [p[n] for n in names])
            return float(loss.numpy().reshape(-1)[0]), \
                {n: g.numpy() for n, g in zip(names, grads)}, logits.numpy()
        # Two passes keep only one block's graph alive (see module docstring).
        with jt.no_grad():
            full = np.empty((len(y), self.table.num_classes), np.float32)
            for img, cls in blocks:
                full[img[:, None], cls[None, :]] = self._block_logits(p, x, img, cls, self.table).numpy()
                jt.gc()
        z = full - full.max(axis=1, keepdims=True)
        prob = np.exp(z)
        prob /= prob.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))
        dlogits = prob.copy()
        dlogits[np.arange(len(y)), y] -= 1.0
        dlogits /= len(y)
        total = {n: np.zeros_like(v) for n, v in self.params.items()}
        for img, cls in blocks:
            block = self._block_logits(p, x, img, cls, self.table)
            surrogate = (block * jt.array(dlogits[img[:, None], cls[None, :]])).sum()
            for n, g in zip(names, jt.grad(surrogate, [p[n] for n in names])):
                total[n] += g.numpy()
            jt.gc()
        return loss, total, full

    def fit(self, features, labels, epochs=10, batch_size=32, lr=0.002, momentum=0.9,
            weight_decay=5e-4, warmup_epochs=1, warmup_lr=1e-5, progress=True):
        """Train on normalised image features with SGD (Dassl's defaults:
        momentum 0.9, weight decay 5e-4) and the warm-up + cosine schedule.
        ``history_``: per epoch (lr, mean loss, train accuracy during the epoch)."""
        x = np.asarray(features, dtype=np.float32)
        y = np.asarray(labels, dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != self.embed_dim or len(x) != len(y):
            raise ValueError(f"features must be (N, {self.embed_dim}) with N labels; "
                             f"got {x.shape} and {y.shape}")
        if len(y) == 0 or y.min() < 0 or y.max() >= self.table.num_classes:
            raise ValueError(f"labels must be in [0, {self.table.num_classes})")
        rng = np.random.default_rng(self.seed)
        buf = {n: np.zeros_like(v) for n, v in self.params.items()}
        bar = tqdm(range(epochs), desc=f"training {self.method}", disable=not progress)
        for epoch in bar:
            rate = cosine_lr(epoch, epochs, lr, warmup_epochs, warmup_lr)
            order = rng.permutation(len(y))
            losses, correct = [], 0
            for s in range(0, len(y), batch_size):
                ids = order[s:s + batch_size]
                loss, grads, logits = self.loss_and_grads(x[ids], y[ids])
                correct += int((logits.argmax(1) == y[ids]).sum())
                for n, g in grads.items():      # torch.optim.SGD, dampening 0
                    g = g + weight_decay * self.params[n]
                    buf[n] = momentum * buf[n] + g
                    self.params[n] = (self.params[n] - rate * buf[n]).astype(np.float32)
                losses.append(loss * len(ids))
            self.history_.append((rate, float(np.sum(losses) / len(y)), correct / len(y)))
            bar.set_postfix(loss=f"{self.history_[-1][1]:.4f}", acc=f"{self.history_[-1][2]:.3f}")
        return self

    # -- persistence ---------------------------------------------------------
    def config(self):
        return dict(method=self.method, n_ctx=self.n_ctx, ctx_init=self.ctx_init or "",
                    class_specific=self.class_specific, position=self.position,
                    class_names=self.class_names, seed=self.seed)

    def save(self, path):
        """Only the learner's parameters, with the config and the backbone's
        name and SHA-256 (a few KB for shared context)."""
        name, sha = backbone_identity(self.model)
        meta = dict(self.config(), version=FORMAT_VERSION, backbone=name, backbone_sha256=sha)
        arrays = {f"param/{k}": v for k, v in self.params.items()}
        atomic_save_npz(path, dict(arrays, meta=np.array(json.dumps(meta))))
        return path


class CoCoOp(CoOp):
    """CoCoOp: CoOp's shared context plus a meta-net bias per image.

    pi = Linear(D, D // 16) -> ReLU -> Linear(D // 16, width), applied to the
    normalised image feature (D = embed_dim); torch layout (out, in).
    """

    method = "cocoop"

    def __init__(self, model, class_names, n_ctx=4, ctx_init="a photo of a",
                 position="end", chunk_size=512, seed=0):
        super().__init__(model, class_names, n_ctx, ctx_init, False, position, chunk_size, seed)

    def _init_extra(self, rng):
        d, h = self.embed_dim, max(1, self.embed_dim // 16)
        self.params["meta_net.linear1.weight"] = _uniform(rng, (h, d), d)
        self.params["meta_net.linear1.bias"] = _uniform(rng, (h,), d)
        self.params["meta_net.linear2.weight"] = _uniform(rng, (self.width, h), h)
        self.params["meta_net.linear2.bias"] = _uniform(rng, (self.width,), h)

    def _blocks(self, batch, num_classes):
        """Whole images per block while classes fit a chunk, else one image
        and classes in chunks: at most chunk_size (image, class) prompts."""
        step = max(1, self.chunk_size)
        if num_classes <= step:
            per = step // num_classes
            return [(np.arange(b, min(b + per, batch)), np.arange(num_classes))
                    for b in range(0, batch, per)]
        return [(np.array([b]), np.arange(c, min(c + step, num_classes)))
                for b in range(batch) for c in range(0, num_classes, step)]

    def _block_logits(self, p, image_features, img_ids, cls_ids, table):
        xb = image_features[img_ids]                                     # (B, D)
        hidden = jt.nn.relu(jt.matmul(xb, p["meta_net.linear1.weight"].transpose())
                            + p["meta_net.linear1.bias"])
        bias = jt.matmul(hidden, p["meta_net.linear2.weight"].transpose()) + p["meta_net.linear2.bias"]
        ctx = p["ctx"] + bias.unsqueeze(1)                               # (B, M, width)
        b, c = len(img_ids), len(cls_ids)
        ctx_ids = np.repeat(np.arange(b), c)
        text = table.encode(self.model, ctx, ctx_ids, np.tile(cls_ids, b))   # (B*C, D)
        text = text.reshape((b, c, -1))
        return self.logit_scale * (xb.unsqueeze(1) * text).sum(-1)


METHODS = {"coop": CoOp, "cocoop": CoCoOp}


def load_prompt_learner(path, model, check_backbone=True):
    """A CoOp/CoCoOp learner saved by ``save``, on ``model``.  Raises
    ValueError when ``model`` is not the backbone it was trained on."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            params = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a saved prompt learner ({e})") from None
    if meta.get("method") not in METHODS:
        raise ValueError(f"{path}: unknown method {meta.get('method')!r}")
    if check_backbone:
        name, sha = backbone_identity(model)
        if sha != meta["backbone_sha256"]:
            raise ValueError(f"{path}: learned on {meta['backbone']} ({meta['backbone_sha256'][:16]}...), "
                             f"not on this model {name} ({sha[:16]}...)")
    kw = dict(n_ctx=meta["n_ctx"], ctx_init=meta["ctx_init"] or None,
              position=meta["position"], seed=meta["seed"])
    if meta["method"] == "coop":
        kw["class_specific"] = meta["class_specific"]
    learner = METHODS[meta["method"]](model, meta["class_names"], **kw)
    for k, v in params.items():
        if k not in learner.params or learner.params[k].shape != v.shape:
            raise ValueError(f"{path}: parameter {k} {v.shape} does not fit this model")
        learner.params[k] = v.astype(np.float32)
    return learner
