"""CoOp prompt learning through jclip's frozen text encoder (CoCoOp, its
image-conditional variant, is ``cocoop``).

CoOp (Zhou et al., IJCV'22) learns M context vectors that replace the words
of a hand-made prompt: [SOS][ctx_1..ctx_M][class tokens][.][EOS] (assembled
by ``prompts.PromptTable``).

Only the learner's parameters train (CLIP is frozen; gradients are asked for
the learner's parameters alone) and only they are saved, with the backbone's
name and SHA-256.  Because the image tower is frozen and the official
trainers use no augmentation at test time, training runs on cached,
normalised image features.

Memory stays bounded for any number of classes: the text encoder sees at most
``chunk_size`` prompts at once.  When a batch needs more, the step is done in
two passes - logits for all blocks without a graph, then per block a second
forward with a graph and the backward of sum(dLoss/dlogits * logits) - which
gives exactly the full-batch gradient.  Prompts are cut after the last EOT,
so a pass costs ~10-20 positions, not 77.
"""
import math
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import jittor as jt

from ..metrics import topk_ids
from ..models.tokenizer import tokenize
from ..progress import progress as progress_bar
from .base import Head, as_features, as_labels, check_number, l2_normalize
from ..file_schema import Array, Float, Int, ListOf, Maybe, Str
from .head_file import ArrayDict, AsTuple
from .episodes import check_episode_data, parse_episode, sample_episode
from .prompts import POSITIONS, PromptTable, backbone_identity, check_model_identity


def copy_params(params: Dict[str, np.ndarray]) -> "OrderedDict[str, np.ndarray]":
    """A copy of a learner's parameters (a snapshot of an epoch)."""
    return OrderedDict((k, v.copy()) for k, v in params.items())


def cosine_lr(epoch: int, epochs: int, lr: float, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """Dassl's schedule: constant ``warmup_lr`` for the warm-up epochs, then
    cosine annealing over ``epochs`` evaluated at the epoch index."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))


class CoOp(Head):
    """CoOp prompt learner.

    Parameters: model: the CLIP model (frozen); class_names: the training
    classes (raw or clean names); n_ctx / ctx_init: ``ctx_init`` words
    ("a photo of a") initialise the context from their token embeddings
    (M = their token count), None or "" = random N(0, 0.02) context of
    ``n_ctx`` vectors; class_specific: one context per class (cannot transfer
    to unseen classes); position: where the class tokens go ('end', 'middle',
    'front'); epochs, batch_size, lr, momentum, weight_decay, warmup_epochs,
    warmup_lr: SGD with Dassl's warm-up + cosine schedule; chunk_size: the
    most prompts one text-encoder pass sees; seed; progress: progress bars;
    episode: None (plain batches), or "N-way K-shot" / (N, K) for multi-task
    training: each step is one task of N classes x K images drawn from the
    training classes, scored among those N classes; episodes_per_epoch: the
    steps of an epoch then; val_class_names: the classes of ``fit``'s
    validation split (default: the training classes) - with an episode and a
    validation split, the epoch with the best all-way validation accuracy is
    kept.
    Fitted: params_ {name: array} (the learner's parameters), n_ctx_,
    class_names_, logit_scale_, history_ [(lr, mean loss, train accuracy)]
    per epoch, val_history_ (validation accuracy per epoch) and best_epoch_
    (1-based; 0: the initial prompts) when a validation split chose it.
    """

    method = "coop"
    _fitted = ("params_", "table_")
    # table_ is rebuilt from the model on load, not saved
    fitted_spec = {"params_": ArrayDict(Array("f", None)), "n_ctx_": Int(1, 1 << 20), "class_names_": ListOf(Str(), 1),
                   "logit_scale_": Float(), "history_": ListOf(AsTuple(ListOf(Float(), 3, 3))),
                   "val_history_": Maybe(ListOf(Float(0, 1))), "best_epoch_": Maybe(Int(0, 1 << 62))}
    identity_spec = {"backbone": Str(), "backbone_sha256": Str(pattern=r"(text-weights:)?[0-9a-f]{64}")}
    _unsaved_params = ("model",)

    def __init__(self, model: Any, class_names: Optional[Sequence[str]], n_ctx: int = 4,
                 ctx_init: Optional[str] = "a photo of a", class_specific: bool = False,
                 position: str = "end", epochs: int = 50, batch_size: int = 32, lr: float = 0.002,
                 momentum: float = 0.9, weight_decay: float = 5e-4, warmup_epochs: int = 1,
                 warmup_lr: float = 1e-5, chunk_size: int = 512, seed: int = 0, progress: bool = False,
                 episode: Optional[Any] = None, episodes_per_epoch: int = 100,
                 val_class_names: Optional[Sequence[str]] = None):
        self._keep_params(locals())

    def check_params(self):
        """The prompt and training settings, checked (see ``Head.check_params``);
        ``episode`` comes back as (N, K) or None."""
        p = super().check_params()
        if self.position not in POSITIONS:
            raise ValueError(f"class token position must be one of {POSITIONS}, not {self.position!r}")
        if not self.ctx_init:
            check_number("n_ctx", self.n_ctx, 1, integer=True)
        for name, low in (("epochs", 0), ("batch_size", 1), ("warmup_epochs", 0), ("chunk_size", 1),
                          ("episodes_per_epoch", 1)):
            p[name] = check_number(name, p[name], low, integer=True)
        for name in ("lr", "momentum", "weight_decay", "warmup_lr"):
            p[name] = check_number(name, p[name], 0.0)
        if self.class_specific and type(self).method != "coop":
            raise ValueError(f"{type(self).__name__} has no class-specific context")
        p["episode"] = None if self.episode is None else parse_episode(self.episode)
        return p

    # -- state -----------------------------------------------------------------
    def _init_state(self):
        """The initial parameters and prompt table, from the hyper-parameters."""
        if self.model is None:
            raise ValueError(f"{type(self).__name__} needs the CLIP model")
        if not self.class_names:
            raise ValueError("class_names is empty")
        self.check_params()
        model = self.model
        self.class_names_ = [str(n) for n in self.class_names]
        self.logit_scale_ = float(np.exp(model.logit_scale.numpy().reshape(-1)[0]))
        width = model.token_embedding.weight.shape[1]
        rng = np.random.default_rng(self.seed)
        if self.ctx_init:
            ids = tokenize([self.ctx_init], model.context_length)[0]
            n_ctx = int(ids.argmax()) - 1
            with jt.no_grad():
                init = model.token_embedding(jt.array(ids[1:1 + n_ctx].astype(np.int32))).numpy()
        else:
            n_ctx = check_number("n_ctx", self.n_ctx, 1, integer=True)
            init = rng.normal(0.0, 0.02, size=(n_ctx, width)).astype(np.float32)
        if n_ctx < 1:
            raise ValueError("the context needs at least one vector")
        self.n_ctx_ = n_ctx
        k = len(self.class_names_) if self.class_specific else 1
        self.params_ = OrderedDict(ctx=np.repeat(init[None].astype(np.float32), k, axis=0))
        self._init_extra(rng)
        self.table_ = PromptTable(model, self.class_names_, n_ctx, self.position)
        self.history_ = []

    @property
    def embed_dim(self) -> int:
        """The CLIP feature width D."""
        return int(self.model.text_projection.shape[1])

    def _init_extra(self, rng):
        pass

    # -- forward -------------------------------------------------------------
    def _blocks(self, batch, num_classes):
        """(image ids, class ids) blocks covering batch x classes, each needing
        at most chunk_size text sequences (CoOp: text is shared by images)."""
        step = max(1, int(self.chunk_size))
        return [(np.arange(batch), np.arange(c, min(c + step, num_classes)))
                for c in range(0, num_classes, step)]

    def _block_logits(self, p, image_features, img_ids, cls_ids, table):
        """(len(img_ids), len(cls_ids)) logits as a Var; p: dict of Vars."""
        ctx = p["ctx"]
        ctx_ids = cls_ids if self.class_specific else np.zeros(len(cls_ids), np.int64)
        text = table.encode(self.model, ctx, ctx_ids, cls_ids)
        return self.logit_scale_ * jt.matmul(image_features[img_ids], text.transpose())

    def _vars(self):
        return OrderedDict((k, jt.array(v)) for k, v in self.params_.items())

    def _table_for(self, class_names):
        if class_names is None or [str(n) for n in class_names] == self.class_names_:
            return self.table_
        if self.class_specific:
            raise ValueError("class-specific contexts exist only for the training classes")
        return PromptTable(self.model, class_names, self.n_ctx_, self.position)

    def _features(self, features):
        """Checked (N, D) float32 features, not yet normalised (the forward
        passes normalise; normalising twice would change the last bits)."""
        return as_features(features, dim=self.embed_dim, normalised=False, dtype=np.float32)

    def logits(self, features: np.ndarray, class_names: Optional[Sequence[str]] = None,
               batch_size: int = 64) -> np.ndarray:
        """(N, C) logits of image features (normalised here) against
        ``class_names`` (default: the training classes; other classes need a
        shared context)."""
        self._check_fitted()
        x = l2_normalize(self._features(features))
        table = self._table_for(class_names)
        out = np.empty((len(x), table.num_classes), np.float32)
        with jt.no_grad():
            p = self._vars()
            with progress_bar(total=len(x), desc=f"{self.method} logits", unit="img",
                              enabled=bool(self.progress)) as bar:
                for s in range(0, len(x), batch_size):
                    xb = jt.array(x[s:s + batch_size])
                    for img, cls in self._blocks(len(xb), table.num_classes):
                        out[s + img[:, None], cls[None, :]] = self._block_logits(p, xb, img, cls, table).numpy()
                    jt.gc()
                    bar.update(len(xb))
        return out

    def predict_topk(self, features: np.ndarray, k: int = 5,
                     class_names: Optional[Sequence[str]] = None) -> np.ndarray:
        """(N, k) class ids best first (ties to the lower id)."""
        return topk_ids(self.logits(features, class_names), k)

    # -- training ------------------------------------------------------------
    def loss_and_grads(self, features: np.ndarray, labels: np.ndarray,
                       class_ids: Optional[np.ndarray] = None
                       ) -> Tuple[float, Dict[str, np.ndarray], np.ndarray]:
        """(mean cross-entropy, {name: gradient ndarray}, logits) of one batch
        at the current parameters (after ``fit``; ``epochs=0`` gives the
        initial ones).

        Parameters: class_ids: score among these training classes only (an
        episode's N classes); labels are then positions in it.
        """
        self._check_fitted()
        x = jt.array(l2_normalize(np.asarray(features, dtype=np.float32)))
        y = np.asarray(labels, dtype=np.int64)
        classes = np.arange(self.table_.num_classes) if class_ids is None \
            else np.asarray(class_ids, dtype=np.int64)
        blocks = [(img, classes[cls]) for img, cls in self._blocks(len(y), len(classes))]
        p = self._vars()
        names = list(p)
        if len(blocks) == 1:
            img, cls = blocks[0]
            logits = self._block_logits(p, x, img, cls, self.table_)
            loss = jt.nn.cross_entropy_loss(logits, jt.array(y.astype(np.int32)))
            grads = jt.grad(loss, [p[n] for n in names])
            return float(loss.numpy().reshape(-1)[0]), \
                {n: g.numpy() for n, g in zip(names, grads)}, logits.numpy()
        # Two passes keep only one block's graph alive (see module docstring).
        col = np.full(self.table_.num_classes, -1)
        col[classes] = np.arange(len(classes))          # class id -> column of the logits
        with jt.no_grad():
            full = np.empty((len(y), len(classes)), np.float32)
            for img, cls in blocks:
                full[img[:, None], col[cls][None, :]] = self._block_logits(p, x, img, cls, self.table_).numpy()
                jt.gc()
        z = full - full.max(axis=1, keepdims=True)
        prob = np.exp(z)
        prob /= prob.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))
        dlogits = prob.copy()
        dlogits[np.arange(len(y)), y] -= 1.0
        dlogits /= len(y)
        total = {n: np.zeros_like(v) for n, v in self.params_.items()}
        for img, cls in blocks:
            block = self._block_logits(p, x, img, cls, self.table_)
            surrogate = (block * jt.array(dlogits[img[:, None], col[cls][None, :]])).sum()
            for n, g in zip(names, jt.grad(surrogate, [p[n] for n in names])):
                total[n] += g.numpy()
            jt.gc()
        return loss, total, full

    def fit(self, features: np.ndarray, labels: Optional[np.ndarray] = None, val_features=None,
            val_labels=None) -> "CoOp":
        """Train on (N, D) image features (normalised here) and their labels.

        SGD (Dassl's defaults: momentum 0.9, weight decay 5e-4) with the
        warm-up + cosine schedule, for ``epochs`` epochs (0: the initial
        prompts): plain batches of ``batch_size`` images, or with ``episode``
        ``episodes_per_epoch`` N-way K-shot tasks per epoch.  Plain batches
        do not use the validation split (a fixed schedule, as the official
        trainers); episodic training keeps the epoch whose prompts score best
        on it, all-way over ``val_class_names`` (ties: the earlier epoch).
        Returns: self.
        """
        p = self.check_params()
        epochs, batch_size, lr, momentum, weight_decay, warmup_epochs, warmup_lr, episode, steps = (
            p[k] for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs",
                           "warmup_lr", "episode", "episodes_per_epoch"))
        self._init_state()
        x = self._features(features)
        y = as_labels(labels, x.shape[0], self.table_.num_classes, every_class=False)
        val = None
        if episode is not None:
            check_episode_data(y, *episode, classes=np.arange(self.table_.num_classes),
                               what=f"training classes of a {episode[0]}-way {episode[1]}-shot episode")
            if val_features is not None or val_labels is not None:
                val = self._val_split(val_features, val_labels)
        rng = np.random.default_rng(self.seed)
        buf = {n: np.zeros_like(v) for n, v in self.params_.items()}
        best = (self._val_accuracy(*val), 0, copy_params(self.params_)) if val else None
        self.val_history_, self.best_epoch_ = ([best[0]] if val else None), None
        bar = progress_bar(range(epochs), desc=f"training {self.method}", unit="epoch",
                           enabled=bool(self.progress))
        for epoch in bar:
            rate = cosine_lr(epoch, epochs, lr, warmup_epochs, warmup_lr)
            losses, correct = [], 0
            for ids, target, classes in self._batches(y, rng, batch_size, episode, steps):
                loss, grads, logits = self.loss_and_grads(x[ids], target, classes)
                correct += int((logits.argmax(1) == target).sum())
                for n, g in grads.items():      # torch.optim.SGD, dampening 0
                    g = g + weight_decay * self.params_[n]
                    buf[n] = momentum * buf[n] + g
                    self.params_[n] = (self.params_[n] - rate * buf[n]).astype(np.float32)
                losses.append(loss * len(ids))
            seen = len(y) if episode is None else steps * episode[0] * episode[1]
            self.history_.append((rate, float(np.sum(losses) / seen), correct / seen))
            bar.set_postfix(loss=f"{self.history_[-1][1]:.4f}", acc=f"{self.history_[-1][2]:.3f}")
            if val:
                self.val_history_.append(self._val_accuracy(*val))
                if self.val_history_[-1] > best[0]:
                    best = (self.val_history_[-1], epoch + 1, copy_params(self.params_))
        if val:
            self.best_epoch_, self.params_ = best[1], best[2]
        return self

    @staticmethod
    def _batches(y, rng, batch_size, episode, steps):
        """(indices, labels, class ids or None) of each step of an epoch."""
        if episode is None:
            order = rng.permutation(len(y))
            for s in range(0, len(y), batch_size):
                yield order[s:s + batch_size], y[order[s:s + batch_size]], None
            return
        for _ in range(steps):
            ep = sample_episode(y, episode[0], episode[1], rng, query=0)
            yield ep.support, ep.support_labels, ep.classes

    def _val_split(self, val_features, val_labels):
        names = self.val_class_names or self.class_names_
        vx = self._features(val_features)
        vy = as_labels(val_labels, vx.shape[0], len(names), "val_labels", every_class=False)
        return vx, vy, list(names)

    def _val_accuracy(self, vx, vy, names) -> float:
        return float((self.logits(vx, names).argmax(1) == vy).mean())

    # -- files ---------------------------------------------------------------
    # Only the learner's parameters (a few KB for a shared context), the
    # hyper-parameters and the backbone's name and SHA-256 are saved.
    def _file_identity(self):
        name, sha = backbone_identity(self.model)
        return {"backbone": name, "backbone_sha256": sha}

    def _check_identity(self, recorded, path):
        check_model_identity(path, recorded, "backbone", self.model, backbone_identity,
                             f"loading a {type(self).__name__}", "learned")

    def _after_load(self, path):
        """The prompt table from the model; the saved parameters must fit it."""
        if self.model is None:
            raise ValueError(f"{path}: loading a {type(self).__name__} needs the CLIP model")
        saved = {k: getattr(self, k) for k in self.fitted_spec}
        self._init_state()                  # the shapes this model gives
        for k, v in saved["params_"].items():
            if k not in self.params_ or self.params_[k].shape != v.shape:
                raise ValueError(f"{path}: fitted/params_: {k} {v.shape} does not fit this model")
        if list(saved["params_"]) != list(self.params_):
            raise ValueError(f"{path}: fitted/params_: holds {list(saved['params_'])}, this learner "
                             f"{list(self.params_)}")
        for k, v in saved.items():
            setattr(self, k, v)
        self.params_ = OrderedDict((k, v.astype(np.float32)) for k, v in saved["params_"].items())
