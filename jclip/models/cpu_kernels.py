"""Fused CPU kernels for the transformer's inference forward (Jittor ``jt.code``).

Jittor's generic CPU path runs a transformer block as a dozen passes over
memory: attention's batched products become broadcast-multiply-reduce
kernels (about 10 GFLOP/s), q/k/v are permuted copies, LayerNorm reads its
input three times, bias and residual adds are passes of their own.  These
kernels do the same arithmetic in fewer passes:

- ``attention_qkv``: per (image, head), scores, softmax and the weighted
  sum straight from the packed in-projection output, q/k/v biases added on
  the way, written in the (tokens, width) layout the out-projection reads;
- ``layer_norm``: one kernel per row (mean, then variance about the mean,
  as torch does, from the row while it is in L1);
- ``linear``: oneDNN's ``dnnl_sgemm`` (the library Jittor's own matmul
  calls) followed by one pass that adds the bias, applies the activation
  and adds the residual.

They have no gradients: ``enabled()`` is true only on CPU under
``jt.no_grad()`` (all of jclip's encoding), so training and prompt learning
keep Jittor's differentiable ops.  ``JCLIP_FUSED_CPU=0`` turns them off
(benchmarks compare both paths).
"""
import os

import jittor as jt

_HEADER = r"""
#include <cmath>
#include <cfloat>
#include <cstdint>
#include <dlfcn.h>
#include <stdexcept>
"""

# dnnl_sgemm (row-major, oneDNN >= 1.0) from the oneDNN that Jittor's mkl ops
# already loaded into the process (RTLD_GLOBAL); looked up once.
_SGEMM_HEADER = _HEADER + r"""
typedef int (*jclip_sgemm_fn)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t,
                              const float*, int64_t, float, float*, int64_t);
static jclip_sgemm_fn jclip_sgemm() {
    static jclip_sgemm_fn fn = (jclip_sgemm_fn)dlsym(RTLD_DEFAULT, "dnnl_sgemm");
    if (!fn) throw std::runtime_error("jclip: dnnl_sgemm is not loaded (oneDNN missing)");
    return fn;
}
"""

_ACTIVATIONS = {
    None: "v",
    # -Ofast assumes no infinities: the exponent is clamped so exp cannot overflow
    "quick_gelu": "v / (1.0f + expf(fminf(-1.702f * v, 80.0f)))",
    "gelu": "0.5f * v * (1.0f + erff(v * 0.70710678118654752f))",
}


def enabled(*tensors):
    """True where the fused kernels apply to ``tensors``: CPU, no gradients,
    all float32 (a half-precision model keeps Jittor's ops), not switched off."""
    return (not jt.flags.use_cuda and bool(jt.flags.no_grad)
            and os.environ.get("JCLIP_FUSED_CPU", "1") != "0"
            and all(t is None or t.dtype == "float32" for t in tensors))


def gemm_enabled(*tensors):
    """True where ``linear`` may run: ``enabled(*tensors)`` and Jittor's oneDNN ops loaded."""
    return enabled(*tensors) and getattr(jt.compile_extern, "mkl_ops", None) is not None


def attention_qkv(qkv, bias, heads, causal=False):
    """Multi-head attention from the packed projection.

    ``qkv`` (B, L, 3W) is ``x @ in_proj_weight.T`` without its bias,
    ``bias`` (3W,); returns (B, L, W): softmax(q k^T / sqrt(d) [+ causal
    mask]) v per head, heads side by side as torch's MultiheadAttention
    lays them out before its out-projection.
    """
    b, length, width3 = qkv.shape
    src = f"""
    const int B = in0_shape0, L = in0_shape1, W3 = in0_shape2, W = W3 / 3, H = {int(heads)}, D = W / H;
    const float scale = 1.0f / sqrtf((float)D);
    const float* bias = in1_p;
    #pragma omp parallel
    {{
        float* kb = new float[(size_t)L * D];
        float* vb = new float[(size_t)L * D];
        float* q = new float[D];
        float* s = new float[L];
        #pragma omp for schedule(static)
        for (int task = 0; task < B * H; task++) {{
            const int bi = task / H, h = task % H;
            const float* base = in0_p + (size_t)bi * L * W3;
            const float* bk = bias + W + h * D;
            const float* bv = bias + 2 * W + h * D;
            for (int j = 0; j < L; j++) {{
                const float* k = base + (size_t)j * W3 + W + h * D;
                const float* v = base + (size_t)j * W3 + 2 * W + h * D;
                for (int d = 0; d < D; d++) {{ kb[j * D + d] = k[d] + bk[d]; vb[j * D + d] = v[d] + bv[d]; }}
            }}
            for (int i = 0; i < L; i++) {{
                const float* qs = base + (size_t)i * W3 + h * D;
                for (int d = 0; d < D; d++) q[d] = (qs[d] + bias[h * D + d]) * scale;
                const int n = {"i + 1" if causal else "L"};
                float m = -FLT_MAX;
                for (int j = 0; j < n; j++) {{
                    const float* k = kb + j * D;
                    float dot = 0.0f;
                    for (int d = 0; d < D; d++) dot += q[d] * k[d];
                    s[j] = dot;
                    m = dot > m ? dot : m;
                }}
                float sum = 0.0f;
                for (int j = 0; j < n; j++) {{ s[j] = expf(s[j] - m); sum += s[j]; }}
                const float inv = 1.0f / sum;
                float* o = out0_p + ((size_t)bi * L + i) * W + h * D;
                for (int d = 0; d < D; d++) o[d] = 0.0f;
                for (int j = 0; j < n; j++) {{
                    const float p = s[j] * inv;
                    const float* v = vb + j * D;
                    for (int d = 0; d < D; d++) o[d] += p * v[d];
                }}
            }}
        }}
        delete[] kb; delete[] vb; delete[] q; delete[] s;
    }}
    """
    return jt.code((b, length, width3 // 3), "float32", [qkv, bias], cpu_header=_HEADER, cpu_src=src)


def layer_norm(x, weight, bias, eps):
    """LayerNorm over the last axis of ``x`` (any leading shape), torch's formula."""
    shape = x.shape
    x = x.reshape((-1, shape[-1]))
    src = f"""
    const int64_t N = in0_shape0, C = in0_shape1;
    const float eps = {float(eps)!r}f;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < N; r++) {{
        const float* xr = in0_p + r * C;
        float* yr = out0_p + r * C;
        float mean = 0.0f;
        for (int64_t c = 0; c < C; c++) mean += xr[c];
        mean /= C;
        float var = 0.0f;
        for (int64_t c = 0; c < C; c++) {{ const float d = xr[c] - mean; var += d * d; }}
        const float inv = 1.0f / sqrtf(var / C + eps);
        for (int64_t c = 0; c < C; c++) yr[c] = (xr[c] - mean) * inv * in1_p[c] + in2_p[c];
    }}
    """
    return jt.code(x.shape, "float32", [x, weight, bias], cpu_header=_HEADER, cpu_src=src).reshape(shape)


def linear(x, weight, bias=None, activation=None, residual=None):
    """``activation(x @ weight.T + bias) + residual`` for 2-D ``x`` (M, K),
    torch-layout ``weight`` (N, K): one oneDNN GEMM and one pass after it."""
    inputs = [x, weight] + ([bias] if bias is not None else []) + ([residual] if residual is not None else [])
    b_idx = 2 if bias is not None else None
    r_idx = len(inputs) - 1 if residual is not None else None
    value = "c[n]" + (f" + in{b_idx}_p[n]" if b_idx is not None else "")
    post = "" if b_idx is None and r_idx is None and activation is None else f"""
    {{
        #pragma omp parallel for schedule(static)
        for (int64_t m = 0; m < M; m++) {{
            float* c = out0_p + m * N;
            {f"const float* r = in{r_idx}_p + m * N;" if r_idx is not None else ""}
            for (int64_t n = 0; n < N; n++) {{
                const float v = {value};
                c[n] = {_ACTIVATIONS[activation]}{" + r[n]" if r_idx is not None else ""};
            }}
        }}
    }}
    """
    src = """
    const int64_t M = in0_shape0, K = in0_shape1, N = in1_shape0;
    jclip_sgemm()('N', 'T', M, N, K, 1.0f, in0_p, K, in1_p, K, 0.0f, out0_p, N);
    """ + post
    return jt.code((x.shape[0], weight.shape[0]), "float32", inputs, cpu_header=_SGEMM_HEADER, cpu_src=src)
