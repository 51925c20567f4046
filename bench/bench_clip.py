"""CLIP encoding speed: jclip (Jittor) vs the PyTorch reference, same weights, one run.

    .venv/bin/python bench/bench_clip.py [--models ViT-B/32 RN101] [--batch 32] [--prompts 256]
                                         [--rounds 3] [--repeats 1] [--generic]

Both frameworks get the same random full-size weights (tests/reference.py),
the same input batch and the same thread count.  The sides are timed in
turn within each round (best of ``--repeats``), ``--rounds`` rounds; the
table gives each side's speed in the median round and the median of the
per-round ratios jclip/torch (on a shared machine a load change hits both
sides of a round alike).  ``--generic`` adds jclip with its fused CPU
kernels off (``JCLIP_FUSED_CPU=0``: Jittor's generic ops) as a third side.
jclip's text encoder skips the padding after the end-of-text token (exact
under the causal mask), the reference runs all 77 positions: that is part
of what is measured.
"""
import argparse
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
os.environ.setdefault("log_silent", "1")
import jclip  # noqa: E402  (before jittor and torch)
import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from reference import build_reference  # noqa: E402
from timing import interleaved, median_ratio, with_env  # noqa: E402  (bench/ is the script's folder)

PROMPT_WORDS = ["dog", "Shiba Dog", "car side", "pizza", "golden retriever", "Stanford Cars 2012 Audi A6"]


def bench_model(name, batch, n_prompts, rounds, repeats, generic):
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
        sides = {"jclip": ours, "torch": theirs}
        if generic:
            sides["generic"] = with_env("JCLIP_FUSED_CPU", "0", ours)
        t = interleaved(sides, rounds, repeats)
        speed = {side: n / statistics.median(times) for side, times in t.items()}
        ratios = [r / o for r, o in zip(t["torch"], t["jclip"])]
        rows.append((name, what, speed, median_ratio(t["torch"], t["jclip"]), ratios,
                     median_ratio(t["generic"], t["jclip"]) if generic else None))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ViT-B/32", "RN101"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--generic", action="store_true", help="also time jclip without its fused CPU kernels")
    args = ap.parse_args()
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    device = "cuda" if jt.flags.use_cuda else "cpu"
    print(f"machine: {platform.processor() or platform.machine()}, {threads} threads, jittor {jt.__version__} "
          f"({device}, oneDNN {'on' if jt.compile_extern.mkl_ops else 'off'}), torch {torch.__version__} (cpu)")
    print(f"{args.rounds} interleaved rounds, best of {args.repeats} each; load average at start "
          f"{os.getloadavg()[0]:.1f}")
    extra = " jclip generic /s | fused/generic |" if args.generic else ""
    print(f"| model | op | jclip /s | torch /s |{extra} jclip/torch (median) | per round |")
    print("|---|---|---|---|" + ("---|---|" if args.generic else "") + "---|---|")
    for name in args.models:
        for model, what, speed, ratio, ratios, vs_generic in bench_model(
                name, args.batch, args.prompts, args.rounds, args.repeats, args.generic):
            unit = "img" if what == "encode_image" else "prompt"
            gen = f" {speed['generic']:.1f} {unit}/s | {vs_generic:.2f}x |" if args.generic else ""
            print(f"| {model} | {what} (batch {args.batch if unit == 'img' else args.prompts}) "
                  f"| {speed['jclip']:.1f} {unit}/s | {speed['torch']:.1f} {unit}/s |{gen} {ratio:.2f}x "
                  f"| {', '.join(f'{r:.2f}' for r in ratios)} |", flush=True)


if __name__ == "__main__":
    main()
