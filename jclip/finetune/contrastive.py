"""Contrastive fine-tuning of a loaded CLIP on a small labelled set.

The recipe people bring from PyTorch (the popular MNIST example: 5 images x
10 classes, batch 10, 20 epochs): CLIP stays frozen except its output
layer(s), which train with CLIP's own symmetric image-text cross-entropy over
each batch of (image, caption) pairs, the caption being the class prompt;
then images are classified against the class prompts, as zero-shot CLIP.

    ft = ClipFinetune(model, class_names, trainable="proj", epochs=20, batch_size=10,
                      seed=1).fit(images, labels)       # (N, 3, S, S) arrays or image paths
    logits = ft.logits(test_images)                     # zero-shot classifier of the tuned CLIP
    ft.save("mnist.safetensors")                        # the trained parameters only
    ft = ClipFinetune(model, None).load("mnist.safetensors")   # refuses another base checkpoint

Trainable parts: ``"proj"`` (image and text projections; for a ResNet tower
``attnpool.c_proj``), ``"last_blocks=N"`` (the last N blocks of each tower
plus its final LayerNorm and projection; a ResNet's last N bottlenecks plus
the attention pool), ``"all"``.  ``train_text=False`` keeps the text tower
frozen.  ``learn_logit_scale`` trains CLIP's temperature (clamped to 100 after
each step, as open_clip's trainer).  AdamW with torch's update rule on fp32
master weights (jclip computes in fp32 throughout, so OpenAI's fp16 weights
need no special casting).  BatchNorm statistics stay frozen (eval mode).

Memory is bounded as CoCoOp's: the encoders see at most ``chunk_size``
images (or prompts) at once.  A step first computes every feature, the loss
and its gradient w.r.t. the normalised features in numpy, then back-propagates
``sum(dLoss/dfeatures * features)`` chunk by chunk (the features of the only
chunk are reused; more chunks are recomputed with a graph) - exactly the
full-batch gradient.

The trained parameters are swapped into the shared model only while this
learner computes (``applied()``), so the model others hold keeps its weights.
"""
import contextlib
import math
import os
import re
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import jittor as jt
from jittor import nn

from ..file_schema import Array, Float, ListOf, Str
from ..heads.base import Head, as_labels, check_number
from ..heads.head_file import ArrayDict
from ..heads.prompts import check_model_identity, model_identity
from ..heads.templates import clean_class_name
from ..models.clip import normalize
from ..models.tokenizer import tokenize
from ..progress import progress as progress_bar
from .files import ClipFinetuneFile
from .trainable import trainable_names

Images = Union[np.ndarray, Sequence[str]]


def base_identity(model: Any) -> Tuple[str, str]:
    """(name, SHA-256) of the base checkpoint (every weight of a model built in memory)."""
    return model_identity(model)


def _owner(model: Any, name: str) -> Tuple[Any, str]:
    """(module holding parameter ``name``, attribute name)."""
    *path, attr = name.split(".")
    mod = model
    for part in path:
        mod = mod.layers[part] if isinstance(mod, nn.Sequential) else getattr(mod, part)
    return mod, attr


def adamw_step(param: np.ndarray, grad: np.ndarray, state: Dict[str, Any], lr: float,
               betas: Tuple[float, float], eps: float, weight_decay: float) -> np.ndarray:
    """One torch.optim.AdamW update (decoupled decay, bias-corrected moments).

    Parameters: state: this parameter's {"step", "m", "v"} (updated in place).
    Returns: the new parameter (float32).
    """
    b1, b2 = betas
    state["step"] = state.get("step", 0) + 1
    m = state["m"] = b1 * state.get("m", np.zeros_like(param)) + (1 - b1) * grad
    v = state["v"] = b2 * state.get("v", np.zeros_like(param)) + (1 - b2) * grad * grad
    param = param * np.float32(1 - lr * weight_decay)
    denom = np.sqrt(v) / math.sqrt(1 - b2 ** state["step"]) + eps
    return (param - (lr / (1 - b1 ** state["step"])) * m / denom).astype(np.float32)


def symmetric_loss(image: np.ndarray, text: np.ndarray, scale: float
                   ) -> Tuple[float, np.ndarray, np.ndarray, float]:
    """CLIP's loss over a batch of pairs (row i of ``image`` with row i of ``text``).

    Returns: (loss, dLoss/dimage, dLoss/dtext, dLoss/dlog(scale)), float64.
    """
    image, text = image.astype(np.float64), text.astype(np.float64)
    n = len(image)
    logits = scale * image @ text.T

    def ce(z):   # mean CE of rows against the diagonal, and its gradient
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(np.exp(z).sum(axis=1)) - np.diag(z)))
        p[np.arange(n), np.arange(n)] -= 1.0
        return loss, p / n

    li, gi = ce(logits)
    lt, gt = ce(logits.T)
    dlogits = 0.5 * (gi + gt.T)
    return 0.5 * (li + lt), scale * dlogits @ text, scale * dlogits.T @ image, float((dlogits * logits).sum())


class ClipFinetune(Head):
    """Contrastive CLIP fine-tuning as a head: fit on images, classify with
    the tuned CLIP's zero-shot classifier.

    Parameters: model: a CLIP (its weights are not changed); class_names;
    template: the caption / classifier prompt ("{}" is the clean class name);
    trainable: "proj", "last_blocks=N" or "all"; train_text: train the text
    side too; learn_logit_scale; epochs, batch_size, lr, betas, eps,
    weight_decay: AdamW (defaults: the popular MNIST recipe); chunk_size: the
    most images or prompts one encoder pass sees; preprocess: turns image
    paths into arrays (default ``Preprocess(model.input_resolution)``);
    seed: the shuffling; progress: a bar counted in images.
    Fitted: params_ {name: fp32 array} (the trained parameters; "logit_scale"
    too when learned), class_names_, history_ [mean loss per epoch].
    """

    method = "clip_finetune"
    _fitted = ("params_", "class_names_")
    _unsaved_params = ("model", "preprocess")
    fitted_spec = {"params_": ArrayDict(Array("f", None)), "class_names_": ListOf(Str(), 1),
                   "history_": ListOf(Float())}
    identity_spec = {"base": Str(), "base_sha256": Str(pattern=r"(weights:)?[0-9a-f]{64}")}
    file_container = ClipFinetuneFile

    def __init__(self, model: Any, class_names: Optional[Sequence[str]],
                 template: str = "a photo of a {}.", trainable: str = "proj", train_text: bool = True,
                 learn_logit_scale: bool = False, epochs: int = 20, batch_size: int = 10,
                 lr: float = 5e-5, betas: Tuple[float, float] = (0.9, 0.98), eps: float = 1e-6,
                 weight_decay: float = 0.2, chunk_size: int = 64, preprocess: Any = None,
                 seed: int = 0, progress: bool = False):
        self._keep_params(locals())

    # -- the model with the trained parameters ---------------------------------
    @contextlib.contextmanager
    def applied(self) -> Iterator[Dict[str, jt.Var]]:
        """Within the block ``self.model`` computes with the trained
        parameters (yields {name: Var}); afterwards its own Vars are back."""
        swapped = []
        try:
            out = OrderedDict()
            for name, value in self.params_.items():
                mod, attr = _owner(self.model, name)
                swapped.append((mod, attr, getattr(mod, attr)))
                out[name] = jt.array(value)
                setattr(mod, attr, out[name])
            yield out
        finally:
            for mod, attr, var in reversed(swapped):
                setattr(mod, attr, var)

    def _init_state(self) -> None:
        if self.model is None:
            raise ValueError("ClipFinetune needs the CLIP model")
        if not self.class_names:
            raise ValueError("class_names is empty")
        if "{}" not in str(self.template):
            raise ValueError(f"template must contain '{{}}' for the class name, not {self.template!r}")
        names = trainable_names(self.model, self.trainable, bool(self.train_text))
        state = self.model.state_dict()
        self.params_ = OrderedDict((k, state[k].numpy().astype(np.float32)) for k in names)
        if self.learn_logit_scale:
            self.params_["logit_scale"] = state["logit_scale"].numpy().astype(np.float32).reshape(1)
        self.class_names_ = [str(n) for n in self.class_names]
        self.history_ = []

    def _tokens(self, class_names: Sequence[str]) -> np.ndarray:
        prompts = [self.template.format(clean_class_name(n)) for n in class_names]
        return tokenize(prompts, self.model.context_length)

    def _scale(self) -> float:
        log = self.params_["logit_scale"] if "logit_scale" in self.params_ \
            else self.model.logit_scale.numpy()
        return float(np.exp(np.float64(np.asarray(log).reshape(-1)[0])))

    def _pixels(self, images: Images, ids: np.ndarray) -> np.ndarray:
        """(len(ids), 3, S, S) float32 rows of an array, or decoded image files."""
        if isinstance(images, np.ndarray):
            return np.ascontiguousarray(images[ids], dtype=np.float32)
        from ..data.images import Preprocess, load_images
        transform = self.preprocess or Preprocess(self.model.input_resolution)
        batch, _, _ = load_images([images[i] for i in ids], transform, strict=True)
        return batch

    @staticmethod
    def _check_images(images: Images, n: Optional[int] = None) -> int:
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"images must be (N, 3, S, S) preprocessed arrays, got shape {images.shape}")
            if not np.isfinite(images).all():
                raise ValueError("images have NaN or infinite values")
        elif isinstance(images, (str, bytes)) or not all(isinstance(p, (str, os.PathLike)) for p in images):
            raise ValueError("images must be an (N, 3, S, S) array or a list of image paths")
        if len(images) == 0:
            raise ValueError("images is empty")
        if n is not None and len(images) != n:
            raise ValueError(f"{len(images)} images for {n} labels")
        return len(images)

    # -- one step ----------------------------------------------------------------
    def _encode(self, tower: str, inputs: np.ndarray, keep: bool):
        """Normalised features (Var) of a chunk; no graph unless ``keep``."""
        def run():
            if tower == "image":
                return normalize(self.model.encode_image(jt.array(inputs)))
            return normalize(self.model.encode_text(inputs))
        if keep:
            return run()
        with jt.no_grad():
            return run()

    def _tower_grads(self, tower: str, inputs: np.ndarray, dfeat: np.ndarray,
                     p: Dict[str, jt.Var], names: List[str], grads: Dict[str, np.ndarray],
                     first: Optional[list]) -> None:
        """Add sum(dfeat * features)'s gradient w.r.t. ``names``, chunk by chunk."""
        if not names:
            return
        step = int(self.chunk_size)
        for i, s in enumerate(range(0, len(inputs), step)):
            feats = first[i] if first is not None else self._encode(tower, inputs[s:s + step], True)
            surrogate = (feats * jt.array(dfeat[s:s + step].astype(np.float32))).sum()
            for n, g in zip(names, jt.grad(surrogate, [p[n] for n in names])):
                grads[n] += g.numpy()
            jt.gc()

    def _features(self, tower: str, inputs: np.ndarray, graph: bool) -> Tuple[np.ndarray, Optional[list]]:
        """(features, their Vars when one chunk holds all and ``graph``)."""
        step = int(self.chunk_size)
        one = graph and len(inputs) <= step
        out, kept = [], []
        for s in range(0, len(inputs), step):
            v = self._encode(tower, inputs[s:s + step], one)
            out.append(v.numpy())
            kept.append(v)
        return np.concatenate(out), (kept if one else None)

    def loss_and_grads(self, pixels: np.ndarray, labels: np.ndarray, text_features: Optional[np.ndarray] = None
                       ) -> Tuple[float, Dict[str, np.ndarray], np.ndarray]:
        """(symmetric loss, {name: gradient}, (B, B) logits) of one batch of
        preprocessed images and their class ids at the current parameters.

        Parameters: text_features: the (C, D) class features when the text
        side is frozen (computed once per fit).
        """
        self._check_fitted()
        labels = np.asarray(labels, dtype=np.int64)
        classes, inverse = np.unique(labels, return_inverse=True)   # one text pass per class
        names = list(self.params_)
        img_names = [n for n in names if n.startswith("visual.")]
        txt_names = [n for n in names if not n.startswith("visual.") and n != "logit_scale"]
        with self.applied() as p:
            img, img_vars = self._features("image", pixels, bool(img_names))
            tokens = self._tokens([self.class_names_[c] for c in classes])
            if text_features is not None and not txt_names:
                txt, txt_vars = text_features[classes], None
            else:
                txt, txt_vars = self._features("text", tokens, bool(txt_names))
            scale = self._scale()
            loss, dimg, dtxt_pairs, dlog = symmetric_loss(img, txt[inverse], scale)
            dtxt = np.zeros((len(classes), txt.shape[1]))
            np.add.at(dtxt, inverse, dtxt_pairs)
            grads = {n: np.zeros_like(v) for n, v in self.params_.items()}
            self._tower_grads("image", pixels, dimg, p, img_names, grads, img_vars)
            self._tower_grads("text", tokens, dtxt, p, txt_names, grads, txt_vars)
        if "logit_scale" in grads:
            grads["logit_scale"][:] = dlog
        return loss, grads, scale * img.astype(np.float64) @ txt[inverse].T

    def check_params(self):
        """The schedule's and AdamW's settings, checked (see ``Head.check_params``)."""
        p = super().check_params()
        p["epochs"] = check_number("epochs", p["epochs"], 0, integer=True)
        p["batch_size"] = check_number("batch_size", p["batch_size"], 1, integer=True)
        p["lr"] = check_number("lr", p["lr"], 0.0)
        p["eps"] = check_number("eps", p["eps"], 0.0, strictly=True)
        p["weight_decay"] = check_number("weight_decay", p["weight_decay"], 0.0)
        p["chunk_size"] = check_number("chunk_size", p["chunk_size"], 1, integer=True)
        try:
            betas = tuple(float(b) for b in self.betas)
        except (TypeError, ValueError):
            betas = ()
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), not {self.betas!r}")
        p["betas"] = betas
        if not re.fullmatch(r"proj|all|last_blocks=\d+", str(self.trainable)):
            raise ValueError(f"trainable must be 'proj', 'last_blocks=N' or 'all', not {self.trainable!r}")
        return p

    # -- training ------------------------------------------------------------------
    def fit(self, images: Images, labels: Optional[np.ndarray] = None, val_features=None,
            val_labels=None) -> "ClipFinetune":
        """Fine-tune on ``images`` ((N, 3, S, S) preprocessed arrays or image
        paths) with their class ids; the validation split is not used (a
        fixed schedule, as the recipe).

        Returns: self.  Raises ValueError for bad hyper-parameters or data.
        """
        p = self.check_params()
        epochs, batch_size, lr, eps, weight_decay, betas = (
            p[k] for k in ("epochs", "batch_size", "lr", "eps", "weight_decay", "betas"))
        self._init_state()
        n = self._check_images(images)
        y = as_labels(labels, n, len(self.class_names_), every_class=False)
        frozen_text = None
        if not any(not k.startswith("visual.") and k != "logit_scale" for k in self.params_):
            frozen_text = self._features("text", self._tokens(self.class_names_), False)[0]
        rng = np.random.default_rng(self.seed)
        state: Dict[str, Dict[str, Any]] = {k: {} for k in self.params_}
        bar = progress_bar(total=epochs * n, desc="clip_finetune", unit="img", enabled=bool(self.progress))
        for _ in range(epochs):
            order = rng.permutation(n)
            losses = 0.0
            for s in range(0, n, batch_size):
                ids = order[s:s + batch_size]
                loss, grads, _ = self.loss_and_grads(self._pixels(images, ids), y[ids], frozen_text)
                for k, g in grads.items():
                    self.params_[k] = adamw_step(self.params_[k], g.astype(np.float32), state[k],
                                                 lr, betas, eps, weight_decay)
                if "logit_scale" in self.params_:    # open_clip's trainer clamps to 100
                    self.params_["logit_scale"] = np.minimum(self.params_["logit_scale"],
                                                             np.float32(math.log(100)))
                losses += loss * len(ids)
                bar.update(len(ids))
            self.history_.append(losses / n)
            bar.set_postfix(loss=f"{losses / n:.4f}")
        bar.close()
        return self

    # -- scoring -------------------------------------------------------------------
    def text_weights(self, class_names: Optional[Sequence[str]] = None) -> np.ndarray:
        """(C, D) normalised class prompt features of the tuned CLIP."""
        self._check_fitted()
        tokens = self._tokens(self.class_names_ if class_names is None else list(class_names))
        with self.applied():
            return self._features("text", tokens, False)[0]

    def image_features(self, images: Images) -> np.ndarray:
        """(N, D) normalised image features of the tuned CLIP."""
        self._check_fitted()
        n = self._check_images(images)
        out = []
        with self.applied():
            for s in range(0, n, int(self.chunk_size)):
                out.append(self._features("image", self._pixels(images, np.arange(s, min(s + self.chunk_size, n))),
                                          False)[0])
                jt.gc()
        return np.concatenate(out)

    def logits(self, images: Images, class_names: Optional[Sequence[str]] = None) -> np.ndarray:
        """(N, C) zero-shot logits of the tuned CLIP: scale * image . prompt
        features, over ``class_names`` (default: the training classes)."""
        text = self.text_weights(class_names)
        return self._scale() * self.image_features(images) @ text.T

    # -- files -----------------------------------------------------------------------
    # Saved (heads/head_file.py through finetune/files.py): only the trained
    # parameters (jclip weights) with the settings and the base checkpoint's SHA-256.
    def _file_identity(self):
        name, sha = base_identity(self.model)
        return {"base": name, "base_sha256": sha}

    def _check_identity(self, recorded, path):
        check_model_identity(path, recorded, "base", self.model, base_identity,
                             "loading a ClipFinetune", "trained")

    def _after_load(self, path):
        """The saved parameters must fit the model they are applied to."""
        if self.model is None:
            raise ValueError(f"{path}: loading needs the base CLIP model")
        state = self.model.state_dict()
        for k, v in self.params_.items():
            if k not in state or tuple(state[k].shape) != v.shape:
                raise ValueError(f"{path}: {k} {v.shape} does not fit this model")
            self.params_[k] = np.asarray(v, dtype=np.float32)
