"""open_clip's ViT-B-16 (GELU, LAION/DataComp architecture): jclip vs open_clip, one run.

    .venv/bin/python bench/bench_open_clip.py [--arch ViT-B-16] [--batch 32] [--prompts 256] [--rounds 3]
                                              [--repeats 1] [--device cpu|cuda]

open_clip builds the architecture from its model configuration with random
weights; jclip builds the same state dict with the architecture facts it
ships (jclip/models/configs/architectures.json).  Same input batch, same
thread count; the two sides are timed in turn within each of ``--rounds``
rounds (best of ``--repeats``) after a warm-up; the table reports images/s
and prompts/s of each in the median round, the median of the per-round
ratios (every round's in brackets), and the largest
difference of the normalised features (the run is also a parity check).
"""
import argparse
import os
import platform
import sys

os.environ.setdefault("log_silent", "1")
import jclip  # noqa: E402  (before jittor and torch)
import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402

from jclip.models.clip import build_model, normalize  # noqa: E402
from timing import interleaved, median_ratio  # noqa: E402  (bench/ is the script's folder)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    jclip.use_device(args.device)
    dev = torch.device(args.device)

    torch.manual_seed(0)
    ref = open_clip.model.CLIP(**open_clip.get_model_config(args.arch)).eval().to(dev)
    state = {k: v.detach().cpu().numpy() for k, v in ref.state_dict().items()}
    model = build_model(state, source=args.arch, arch=args.arch)
    res = model.input_resolution
    images = np.random.default_rng(0).standard_normal((args.batch, 3, res, res)).astype(np.float32)
    tokens = jclip.tokenize([f"a photo of a {w}, number {i}." for i, w in
                             enumerate(["dog", "Shiba Dog", "car side", "pizza"] * (args.prompts // 4))])
    timg, ttok = torch.from_numpy(images).to(dev), torch.from_numpy(tokens).long().to(dev)

    def jt_image():
        out = jclip.encode_images(model, images, batch_size=args.batch)
        jt.sync_all()
        return out

    def jt_text():
        with jt.no_grad():
            out = normalize(model.encode_text(tokens)).numpy()
        jt.sync_all()
        return out

    def torch_image():
        with torch.no_grad():
            return ref.encode_image(timg, normalize=True).cpu().numpy()

    def torch_text():
        with torch.no_grad():
            return ref.encode_text(ttok, normalize=True).cpu().numpy()

    print(f"# {args.arch} ({sum(p.numel() for p in ref.parameters()):,} parameters), device {args.device}, "
          f"{threads} threads, {platform.processor() or platform.machine()}, "
          f"Jittor {jt.__version__}, torch {torch.__version__}, open_clip {open_clip.__version__}")
    print("| measure | open_clip | jclip | jclip/open_clip speed | max abs diff (normalised) |")
    print("|---|---|---|---|---|")
    for what, n, ours, theirs in (("encode_image", args.batch, jt_image, torch_image),
                                  ("encode_text", len(tokens), jt_text, torch_text)):
        diff = float(np.abs(ours() - theirs()).max())
        t = interleaved({"jclip": ours, "ref": theirs}, args.rounds, args.repeats)
        t_ours, t_ref = sorted(t["jclip"])[len(t["jclip"]) // 2], sorted(t["ref"])[len(t["ref"]) // 2]
        rounds = ", ".join(f"{r / o:.2f}" for r, o in zip(t["ref"], t["jclip"]))
        unit = "images/s" if what == "encode_image" else "prompts/s"
        print(f"| {what}, batch {n} ({unit}) | {n / t_ref:.2f} | {n / t_ours:.2f} "
              f"| {median_ratio(t['ref'], t['jclip']):.2f} ({rounds}) | {diff:.2e} |", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
