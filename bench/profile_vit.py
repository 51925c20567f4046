"""Where one ViT image forward spends its time, per kind of op (Jittor profiler).

    .venv/bin/python bench/profile_vit.py [--model ViT-B/32] [--batch 32] [--rerun 2]

Random full-size weights (tests/reference.py), one batch under
``jt.no_grad()``.  Ops are grouped: GEMM (Jittor's oneDNN matmul, jclip's
fused GEMM kernel with its bias/activation/residual pass), attention
(Jittor's broadcast-multiply-reduce products and softmax, or jclip's fused
kernel), LayerNorm, copies/transposes, other element-wise.  GFLOP/s are
counted from the model's shapes (GEMMs and attention products only).
``JCLIP_FUSED_CPU=0`` profiles Jittor's generic path.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
os.environ.setdefault("log_silent", "1")
import jclip  # noqa: E402
import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402
from reference import build_reference  # noqa: E402


def kind(name):
    if "jclip_sgemm" in name or name.startswith("mkl_matmul"):
        return "GEMM (+ fused bias/act/residual)"
    if "W3" in name or ("OP:multiply" in name and "DIM=5" in name) or "OP:exp" in name or "OP:maximum" in name:
        return "attention (products, softmax)"
    if "eps" in name or "OP:mean" in name:
        return "LayerNorm"
    if "transpose" in name or "getitem" in name or "setitem" in name or "concat" in name:
        return "copies / transposes"
    return "other element-wise (bias, residual, GELU)"


def vit_flops(visual, batch):
    """Multiply-adds x 2 of the GEMMs and attention products of one forward."""
    grid = visual.input_resolution // visual.patch_size
    tokens, width = grid * grid + 1, visual.transformer.width
    block = visual.transformer.resblocks[0]
    mlp = block.mlp.c_fc.weight.shape[0]
    per_layer = tokens * width * (3 * width + width + 2 * mlp) + 2 * tokens * tokens * width
    patch = grid * grid * width * 3 * visual.patch_size ** 2
    return 2.0 * batch * (visual.transformer.layers * per_layer + patch)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B/32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rerun", type=int, default=2)
    args = ap.parse_args()
    _, state = build_reference(args.model)
    model = jclip.build_model(state)
    res = model.input_resolution
    x = jt.array(np.random.default_rng(0).standard_normal((args.batch, 3, res, res)).astype(np.float32))
    with jt.no_grad():
        for _ in range(2):
            model.encode_image(x).sync()
        with jt.profile_scope(warmup=0, rerun=args.rerun) as report:
            model.encode_image(x).sync()
    header, rows = report[0], report[1:]
    t_col, n_col = header.index("TotalTime"), header.index("Name")
    groups = {}
    for row in rows:
        groups[kind(row[n_col])] = groups.get(kind(row[n_col]), 0.0) + float(row[t_col]) / 1e6 / (args.rerun + 1)
    total = sum(groups.values())
    flops = vit_flops(model.visual, args.batch)
    path = "generic Jittor ops" if os.environ.get("JCLIP_FUSED_CPU") == "0" else "fused CPU kernels"
    print(f"{args.model}, batch {args.batch}, {path}: {total:.0f} ms of ops per forward, "
          f"{flops / 1e9:.0f} GFLOP -> {flops / total / 1e6:.0f} GFLOP/s overall")
    print("| op kind | ms | share |\n|---|---:|---:|")
    for name, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {ms:.0f} | {100 * ms / total:.0f}% |")


if __name__ == "__main__":
    main()
