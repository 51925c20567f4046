"""test.sh's stages on the default model sizes: images/s, batched vs one at a time.

Random full-size weights (ViT-B/32, RN101, ConvNeXt-V2-B with a 130-way head)
and N generated JPEGs (500x375, like the contest's photos).  Each stage runs
as test.sh runs it (jclip.pipeline.backbones.encode_files: threaded decoding one batch
ahead, batched encoding; InMaP over 403 classes with the configured
iterations; LP++ logits; the dog head via jclip.finetune.predict).  The
reference approach encodes one image at a time (decode, preprocess, a batch
of 1), as the reference solution did.

    .venv/bin/python bench/bench_pipeline.py --n 100 --ref-n 10
"""
import argparse
import dataclasses
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def make_images(folder, n):
    import numpy as np
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(1, n + 1):
        p = os.path.join(folder, f"image_{i}.jpg")
        if not os.path.isfile(p):
            base = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)   # smooth, photo-like JPEG size
            Image.fromarray(base).resize((500, 375), Image.BICUBIC).save(p, quality=90)
        paths.append(p)
    return paths


def make_weights(folder):
    """Random full-size weights in jclip's format (made once, reused)."""
    from jclip.weights.checkpoint import save_state_dict
    os.makedirs(folder, exist_ok=True)
    out = {}
    for name, fn in (("ViT-B/32", "vit.pkl"), ("RN101", "rn.pkl")):
        out[name] = os.path.join(folder, fn)
        if not os.path.isfile(out[name]):
            from reference import build_reference
            _, sd = build_reference(name)
            save_state_dict(out[name], sd, {"model": name, "source_sha256": "0" * 64})
    out["convnext"] = os.path.join(folder, "convnextv2_base.pkl")
    if not os.path.isfile(out["convnext"]):
        import timm
        from jclip.models.convnext import timm_to_official
        sd = timm.create_model("convnextv2_base", pretrained=False).state_dict()
        save_state_dict(out["convnext"], timm_to_official({k: v.numpy() for k, v in sd.items()}),
                        {"model": "convnextv2_base"})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="test images")
    p.add_argument("--ref-n", type=int, default=10, help="images for the one-at-a-time reference")
    p.add_argument("--dir", default=os.path.join(HERE, "out", "pipeline"))
    p.add_argument("--device", default=None)
    p.add_argument("--inmap-iters", type=int, default=None, help="default: the configuration's")
    a = p.parse_args()
    os.environ.setdefault("log_silent", "1")
    import numpy as np
    import jclip
    import jittor as jt
    from jclip.pipeline.backbones import encode_files
    from jclip.pipeline.config import Backbone, load_config
    from jclip.models.load import use_device
    from jclip.heads import InMaP, LPPlusPlus, l2_normalize
    from jclip.data.images import preprocess_for, read_image
    from jclip import finetune
    from jclip.models.convnext import load_convnextv2

    cfg = load_config(None, ["cache_dir=null"])
    device = use_device(a.device)
    paths = make_images(os.path.join(a.dir, "TestSet"), a.n)
    weights = make_weights(os.path.join(a.dir, "weights"))
    rows, feats = [], {}

    def record(stage, n, seconds, how):
        rows.append({"stage": stage, "how": how, "images": n, "seconds": round(seconds, 2),
                     "images_per_s": round(n / seconds, 2)})
        print(f"{stage:34s} {how:22s} {n:5d} images {seconds:8.2f} s {n / seconds:8.2f} img/s", flush=True)

    for name, key in (("ViT-B/32", "vit"), ("RN101", "rn")):
        model, pre = jclip.load(weights[name], device=device)
        # compile every shape the timed run meets, the last partial batch included
        encode_files(model, pre, paths, Backbone(name, weights[name]), cfg, "warm-up")
        t0 = time.perf_counter()
        feats[key], _ = encode_files(model, pre, paths, Backbone(name, weights[name]), cfg, name)
        record(f"encode {name}", len(paths), time.perf_counter() - t0, f"batch {cfg.batch_size}")
        with jt.no_grad():
            model.encode_image(jt.array(read_image(paths[0], pre)[None])).numpy()  # compile batch 1
            t0 = time.perf_counter()
            for path in paths[:a.ref_n]:
                x = read_image(path, pre)[None]
                model.encode_image(jt.array(x)).numpy()
            record(f"encode {name}", a.ref_n, time.perf_counter() - t0, "one at a time")
        del model
        jt.gc()

    icfg = dataclasses.asdict(cfg.inmap)
    if a.inmap_iters:
        icfg["iters"] = a.inmap_iters
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for key in feats:
        t = l2_normalize(rng.normal(size=(403, 512)).astype(np.float32))
        InMaP(**icfg).fit(feats[key], t).logits(feats[key])
    record(f"InMaP x2 ({icfg['iters']} iters, 403 cls)", len(paths), time.perf_counter() - t0, "all at once")
    spent = 0.0
    for key in feats:
        x = l2_normalize(rng.normal(size=(1496, 512)).astype(np.float32))
        head = LPPlusPlus(epochs=1).fit(x, np.repeat(np.arange(374), 4), l2_normalize(
            rng.normal(size=(374, 512)).astype(np.float32)))
        t0 = time.perf_counter()          # only the logits run at test time
        head.logits(feats[key])
        spent += time.perf_counter() - t0
    record("LP++ logits x2 (374 cls)", len(paths), max(spent, 1e-6), "all at once")

    model = load_convnextv2(weights["convnext"], num_classes=130)
    model.offset, model.image_size = 244, 224
    bs = cfg.dog_head.batch_size
    finetune.predict(model, paths, batch_size=bs, verbose=False)   # compile every shape
    t0 = time.perf_counter()
    finetune.predict(model, paths, batch_size=bs, verbose=False)
    record("dog head ConvNeXt-V2-B", len(paths), time.perf_counter() - t0, f"batch {bs}")
    pre = preprocess_for("convnextv2_base")
    with jt.no_grad():
        model(jt.array(read_image(paths[0], pre)[None])).numpy()   # compile batch 1
        t0 = time.perf_counter()
        for path in paths[:a.ref_n]:
            model(jt.array(read_image(path, pre)[None])).numpy()
        record("dog head ConvNeXt-V2-B", a.ref_n, time.perf_counter() - t0, "one at a time")

    info = {"device": device, "cpus": os.cpu_count(), "n": a.n, "rows": rows}
    os.makedirs(a.dir, exist_ok=True)
    with open(os.path.join(a.dir, "results.json"), "w") as f:
        json.dump(info, f, indent=1)
    # B set estimate: every image through both CLIPs, ~1,590 dogs through ConvNeXt
    rate = {(r["stage"], r["how"] != "one at a time"): r["images_per_s"] for r in rows}
    for batched in (True, False):
        enc = sum(4305 / rate[(f"encode {m}", batched)] for m in ("ViT-B/32", "RN101"))
        dog = 1590 / rate[("dog head ConvNeXt-V2-B", batched)]
        label = "batched" if batched else "one at a time"
        print(f"B set estimate ({label}): encoding {enc / 60:.1f} min + dog head {dog / 60:.1f} min "
              f"(+ InMaP, which grows with N)")


if __name__ == "__main__":
    main()
