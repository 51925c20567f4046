"""jclip's fused CPU kernels (jclip/models/cpu_kernels.py) against PyTorch,
and the switch between them and Jittor's differentiable ops."""
import os

import numpy as np
import pytest
import torch

import jclip  # noqa: F401  (configures Jittor before it is imported)
import jittor as jt
from jclip.models import cpu_kernels as K
from reference import build_reference

RNG = np.random.default_rng(0)


def _arr(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_torch(causal):
    b, length, width, heads = 3, 7, 4 * 16, 4
    qkv, bias = _arr(b, length, 3 * width, scale=2.0), _arr(3 * width)
    with jt.no_grad():
        ours = K.attention_qkv(jt.array(qkv), jt.array(bias), heads, causal).numpy()
    t = torch.from_numpy(qkv + bias).reshape(b, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    ref = torch.nn.functional.scaled_dot_product_attention(t[0], t[1], t[2], is_causal=causal)
    np.testing.assert_allclose(ours, ref.permute(0, 2, 1, 3).reshape(b, length, width).numpy(), atol=1e-5)


def test_layer_norm_matches_torch():
    x, w, b = _arr(2, 5, 48, scale=3.0) + 10.0, _arr(48), _arr(48)   # a large mean: variance about the mean
    with jt.no_grad():
        ours = K.layer_norm(jt.array(x), jt.array(w), jt.array(b), 1e-5).numpy()
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (48,), torch.from_numpy(w), torch.from_numpy(b))
    assert ours.shape == x.shape
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)


@pytest.mark.skipif(getattr(jt.compile_extern, "mkl_ops", None) is None,
                    reason="Jittor's oneDNN ops are not loaded")
@pytest.mark.parametrize("activation", [None, "quick_gelu", "gelu"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_linear_matches_torch(activation, with_bias, with_residual):
    x, w, b, r = _arr(37, 64), _arr(50, 64), _arr(50), _arr(37, 50)
    x[0] *= 30.0                                           # large negative inputs to the activations
    with jt.no_grad():
        ours = K.linear(jt.array(x), jt.array(w), jt.array(b) if with_bias else None, activation,
                        jt.array(r) if with_residual else None).numpy()
    y = torch.from_numpy(x) @ torch.from_numpy(w).T + (torch.from_numpy(b) if with_bias else 0)
    act = {None: lambda v: v, "quick_gelu": lambda v: v * torch.sigmoid(1.702 * v),
           "gelu": torch.nn.functional.gelu}[activation]
    ref = act(y) + (torch.from_numpy(r) if with_residual else 0)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4, rtol=1e-5)


def test_fused_only_without_gradients_on_cpu(monkeypatch):
    monkeypatch.delenv("JCLIP_FUSED_CPU", raising=False)
    with jt.no_grad():
        assert K.enabled() == (not jt.flags.use_cuda)
        monkeypatch.setenv("JCLIP_FUSED_CPU", "0")
        assert not K.enabled() and not K.gemm_enabled()
    monkeypatch.delenv("JCLIP_FUSED_CPU")
    assert not K.enabled()                                   # gradients may flow: Jittor's own ops


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_fused_and_generic_forward_agree(name, monkeypatch):
    _, state = build_reference(name)
    model = jclip.build_model(state)
    res = model.input_resolution
    images = _arr(4, 3, res, res)
    tokens = jclip.tokenize(["a photo of a cat.", "hi", "a much longer prompt about a dog on a sofa"])
    outs = {}
    for fused in ("1", "0"):
        monkeypatch.setenv("JCLIP_FUSED_CPU", fused)
        with jt.no_grad():
            outs[fused] = (model.encode_image(images).numpy(), model.encode_text(tokens).numpy())
    for a, b in zip(outs["1"], outs["0"]):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    # with gradients the generic ops run and the text tower is differentiable (prompt learning)
    monkeypatch.delenv("JCLIP_FUSED_CPU")
    x = model.token_embedding(jt.array(tokens.astype(np.int32)))
    grad = jt.grad(model.encode_token_embeddings(x, tokens.argmax(-1)).sum(), x)
    assert np.abs(grad.numpy()).sum() > 0
    assert "JCLIP_FUSED_CPU" not in os.environ
