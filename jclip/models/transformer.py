"""The transformer of CLIP's towers (OpenAI's layout, batch-first, fp32).

``Linear`` keeps torch's (out, in) weights, ``MultiheadAttention`` torch's
packed in-projection, so OpenAI and open_clip state dicts load by name.
Under ``jt.no_grad()`` on CPU a block runs as fused kernels
(``cpu_kernels``); otherwise, and wherever gradients flow, as Jittor's
differentiable ops.
"""
from collections import OrderedDict

import numpy as np
import jittor as jt
from jittor import nn

from . import cpu_kernels


class Linear(nn.Module):
    """``x @ weight.T + bias`` with torch's (out, in) layout, as one 2-D matmul.

    Folding the leading dimensions into one keeps the product a plain GEMM,
    which Jittor hands to oneDNN on CPU and cuBLAS on GPU (under no_grad on
    CPU: oneDNN's sgemm with the bias added in the same kernel).
    """

    def __init__(self, in_features, out_features, bias=True):
        self.weight = jt.randn((out_features, in_features)) * in_features ** -0.5
        self.bias = jt.zeros((out_features,)) if bias else None

    def execute(self, x):
        lead = x.shape[:-1]
        x = x.reshape((-1, x.shape[-1]))
        if cpu_kernels.gemm_enabled(x, self.weight):   # GEMM and bias in one kernel
            y = cpu_kernels.linear(x, self.weight, self.bias)
        else:
            y = nn.matmul_transpose(x, self.weight)
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(tuple(lead) + (y.shape[-1],))


class QuickGELU(nn.Module):
    def execute(self, x):
        return x * jt.sigmoid(1.702 * x)


class GELU(nn.Module):
    """The exact (erf) GELU, torch.nn.GELU's default, which open_clip's non-quickgelu models use."""

    def execute(self, x):
        return 0.5 * x * (1.0 + jt.erf(x * (2.0 ** -0.5)))


ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": GELU}


def layer_norm(module, x):
    """``module(x)`` for an nn.LayerNorm, as one fused kernel where it applies."""
    if cpu_kernels.enabled(x, module.weight):
        return cpu_kernels.layer_norm(x, module.weight, module.bias, module.eps)
    return module(x)


def attention(q, k, v, mask=None):
    """Scaled dot-product attention on (B, heads, L, head_dim) tensors."""
    q = q * (q.shape[-1] ** -0.5)
    scores = jt.matmul(q, k.transpose((0, 1, 3, 2)))
    if mask is not None:
        scores = scores + mask
    return jt.matmul(nn.softmax(scores, dim=-1), v)


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention's packed-projection layout, batch-first."""

    def __init__(self, d_model, n_head):
        self.n_head = n_head
        self.in_proj_weight = jt.randn((3 * d_model, d_model)) * d_model ** -0.5
        self.in_proj_bias = jt.zeros((3 * d_model,))
        self.out_proj = Linear(d_model, d_model)

    def execute(self, x, mask=None):
        b, length, width = x.shape
        qkv = nn.matmul_transpose(x.reshape((-1, width)), self.in_proj_weight) + self.in_proj_bias
        qkv = qkv.reshape((b, length, 3, self.n_head, width // self.n_head)).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2], mask)
        return self.out_proj(out.permute(0, 2, 1, 3).reshape((b, length, width)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model, n_head, activation="quick_gelu", mlp_width=None):
        mlp_width = mlp_width or d_model * 4
        self.attn = MultiheadAttention(d_model, n_head)
        self.ln_1 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", Linear(d_model, mlp_width)),
            ("gelu", ACTIVATIONS[activation]()),
            ("c_proj", Linear(mlp_width, d_model)),
        ]))
        self.ln_2 = nn.LayerNorm(d_model)
        self.activation = activation

    def execute(self, x, mask=None, causal=False):
        """``mask`` an additive (L, L) attention mask, or ``causal=True`` for
        the causal one (the fused CPU kernel skips the masked keys)."""
        if mask is None and cpu_kernels.gemm_enabled(x, self.attn.in_proj_weight):
            return self._fused(x, causal)
        if causal and mask is None:
            mask = causal_mask(x.shape[1])
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))

    def _fused(self, x, causal):
        # The same block in six kernels: residual adds, biases and the
        # activation ride on the GEMMs' output pass; q/k/v are never copied.
        b, length, width = x.shape
        x = x.reshape((b * length, width))
        qkv = cpu_kernels.linear(layer_norm(self.ln_1, x), self.attn.in_proj_weight)
        heads = cpu_kernels.attention_qkv(qkv.reshape((b, length, 3 * width)), self.attn.in_proj_bias,
                                          self.attn.n_head, causal)
        out = self.attn.out_proj
        x = cpu_kernels.linear(heads.reshape((b * length, width)), out.weight, out.bias, residual=x)
        fc, proj = self.mlp.c_fc, self.mlp.c_proj
        hidden = cpu_kernels.linear(layer_norm(self.ln_2, x), fc.weight, fc.bias, activation=self.activation)
        x = cpu_kernels.linear(hidden, proj.weight, proj.bias, residual=x)
        return x.reshape((b, length, width))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, activation="quick_gelu", mlp_width=None):
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, activation, mlp_width)
                                         for _ in range(layers)])

    def execute(self, x, mask=None, causal=False):
        for block in self.resblocks:
            x = block(x, mask, causal)
        return x


def causal_mask(length):
    return jt.array(np.triu(np.full((length, length), -np.inf, dtype=np.float32), 1))
