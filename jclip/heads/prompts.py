"""Prompts whose words are partly learned: the token table CoOp-style
learners assemble, and the identity of the CLIP they were learned on.

A prompt is [SOS][ctx_1..ctx_M][class tokens][.][EOS] (the class tokens at
the end, in the middle or at the front); the constant embeddings come from
the frozen token embedding once, the context vectors from the learner, and
one gather joins them, so gradients reach the context only.  Prompts are cut
after the last EOT (exact: the mask is causal).
"""
import hashlib
from typing import Any

import numpy as np
import jittor as jt

from ..models.clip import normalize
from ..models.tokenizer import get_tokenizer, tokenize
from .templates import clean_class_name

POSITIONS = ("end", "middle", "front")


def model_identity(model: Any, text_only: bool = False):
    """(name, sha256) of the CLIP a head was learned on: the weights file's
    (``jclip.weights_sha256``) for a loaded model, else a hash of its weights
    (``text_only``: of the text encoder's, all a prompt learner depends on)
    for a model built in memory."""
    name = getattr(model, "name", None) or "unnamed"
    if getattr(model, "_weights_sha256", None) or getattr(model, "weights_path", None):
        from ..models.load import weights_sha256
        return name, weights_sha256(model)
    h = hashlib.sha256()
    for key, var in sorted(model.state_dict().items()):
        if not (text_only and key.startswith("visual.")):
            h.update(key.encode())
            h.update(np.ascontiguousarray(var.numpy(), dtype=np.float32).tobytes())
    return name, ("text-weights:" if text_only else "weights:") + h.hexdigest()


def backbone_identity(model: Any):
    """``model_identity`` of a prompt learner's CLIP (its text encoder)."""
    return model_identity(model, text_only=True)


def check_model_identity(path: str, recorded: dict, name_key: str, model: Any, identity,
                         needs: str, verb: str) -> None:
    """ValueError naming ``path`` unless ``model`` is the one the file records
    (``recorded[name_key]`` and ``recorded[name_key + "_sha256"]``); ``needs``
    and ``verb`` word the messages ("loading a CoOp", "learned")."""
    if model is None:
        raise ValueError(f"{path}: {needs} needs the CLIP model")
    name, sha = identity(model)
    want = recorded[name_key + "_sha256"]
    if sha != want:
        raise ValueError(f"{path}: {verb} on {recorded[name_key]} ({want[:16]}...), "
                         f"not on this model {name} ({sha[:16]}...)")


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
