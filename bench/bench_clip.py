"""CLIP encoding speed: jclip (Jittor) vs the PyTorch reference, same weights, one run.

    .venv/bin/python bench/bench_clip.py [--models ViT-B/32 RN101] [--batch 32] [--prompts 256] [--repeats 3]

Both frameworks get the same random full-size weights (tests/reference.py),
the same input batch and the same thread count; the table reports images/s
and prompts/s of each and the ratio jclip/torch.  jclip's text encoder skips
the padding after the end-of-text token (exact under the causal mask), the
reference runs all 77 positions: that is part of what is measured.
"""
import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
os.environ.setdefault("log_silent", "1")
import jclip  # noqa: E402  (before jittor and torch)
import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from reference import build_reference  # noqa: E402
from timing import best_time  # noqa: E402  (bench/ is the script's folder)

PROMPT_WORDS = ["dog", "Shiba Dog", "car side", "pizza", "golden retriever", "Stanford Cars 2012 Audi A6"]


def bench_model(name, batch, n_prompts, repeats):
    ref, state = build_reference(name)
    model = jclip.build_model(state)
    res = model.input_resolution
    images = np.random.default_rng(0).standard_normal((batch, 3, res, res)).astype(np.float32)
    prompts = [f"a photo of a {PROMPT_WORDS[i % len(PROMPT_WORDS)]}, number {i}." for i in range(n_prompts)]
    tokens = jclip.tokenize(prompts)
    timg, ttok = torch.from_numpy(images), torch.from_numpy(tokens)

    def jt_image():
        # the public batched call: on CPU it slices conv towers (jclip/batching.py)
        jclip.encode_images(model, images, batch_size=batch)
        jt.sync_all()

    def jt_text():
        with jt.no_grad():
            model.encode_text(tokens).sync()
        jt.sync_all()

    def torch_image():
        with torch.no_grad():
            ref.encode_image(timg)

    def torch_text():
        with torch.no_grad():
            ref.encode_text(ttok)

    rows = []
    for what, n, ours, theirs in (("encode_image", batch, jt_image, torch_image),
                                  ("encode_text", n_prompts, jt_text, torch_text)):
        t_ours, t_ref = best_time(ours, repeats), best_time(theirs, repeats)
        rows.append((name, what, n / t_ours, n / t_ref, t_ref / t_ours))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ViT-B/32", "RN101"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    device = "cuda" if jt.flags.use_cuda else "cpu"
    print(f"machine: {platform.processor() or platform.machine()}, {threads} threads, jittor {jt.__version__} "
          f"({device}, oneDNN {'on' if jt.compile_extern.mkl_ops else 'off'}), torch {torch.__version__} (cpu)")
    print("| model | op | jclip /s | torch /s | jclip/torch |\n|---|---|---|---|---|")
    for name in args.models:
        for model, what, ours, theirs, ratio in bench_model(name, args.batch, args.prompts, args.repeats):
            unit = "img" if what == "encode_image" else "prompt"
            print(f"| {model} | {what} (batch {args.batch if unit == 'img' else args.prompts}) "
                  f"| {ours:.1f} {unit}/s | {theirs:.1f} {unit}/s | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
