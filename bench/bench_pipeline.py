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
    p.add_argument("--classes", type=int, default=374, help="seen classes for the prompt-cache "
                   "comparison (0: skip it); the 29 unseen ones are added")
    a = p.parse_args()
    os.environ.setdefault("log_silent", "1")
    import numpy as np
    import jclip
    import jittor as jt
    from jclip.pipeline.backbones import LoadedBackbone, encode_files
    from jclip.pipeline.config import BackboneSpec, load_config
    from jclip.models.load import use_device
    from jclip.heads import InMaP, LPPlusPlus, l2_normalize
    from jclip.data.images import preprocess_for, read_image
    from jclip import finetune
    from jclip.pretrained import load_convnextv2_file

    cfg = load_config(None, ["cache_dir=null"])
    device = use_device(a.device)
    paths = make_images(os.path.join(a.dir, "TestSet"), a.n)
    weights = make_weights(os.path.join(a.dir, "weights"))
    rows, feats = [], {}

    def record(stage, n, seconds, how):
        rows.append({"stage": stage, "how": how, "images": n, "seconds": round(seconds, 2),
                     "images_per_s": round(n / seconds, 2)})
        print(f"{stage:34s} {how:22s} {n:5d} images {seconds:8.2f} s {n / seconds:8.2f} img/s", flush=True)

    towers = []
    for name, key in (("ViT-B/32", "vit"), ("RN101", "rn")):
        model, pre = jclip.load(weights[name], device=device)
        towers.append(LoadedBackbone(key, model, pre, BackboneSpec(name, weights[name]), jclip.weights_sha256(model)))
        # compile every shape the timed run meets, the last partial batch included
        encode_files(towers[-1:], paths, cfg, "warm-up")
    # before: each tower decodes every image itself; after: one decode for both
    t0 = time.perf_counter()
    alone = {t.key: encode_files([t], paths, cfg, t.key)[t.key][0] for t in towers}
    record("encode ViT-B/32 + RN101", len(paths), time.perf_counter() - t0, "before: decode per tower")
    t0 = time.perf_counter()
    both = encode_files(towers, paths, cfg, "vit+rn")
    record("encode ViT-B/32 + RN101", len(paths), time.perf_counter() - t0, "after: decoded once")
    assert all(np.array_equal(both[k][0], alone[k]) for k in alone), "shared decode changed features"
    feats = {k: v[0] for k, v in both.items()}
    for t in towers:
        model, pre, name = t.model, t.preprocess, t.spec.model
        t0 = time.perf_counter()
        encode_files([t], paths, cfg, name)
        record(f"encode {name}", len(paths), time.perf_counter() - t0, f"batch {cfg.batch_size}")
        with jt.no_grad():
            model.encode_image(jt.array(read_image(paths[0], pre)[None])).numpy()  # compile batch 1
            t0 = time.perf_counter()
            for path in paths[:a.ref_n]:
                x = read_image(path, pre)[None]
                model.encode_image(jt.array(x)).numpy()
            record(f"encode {name}", a.ref_n, time.perf_counter() - t0, "one at a time")

    if a.classes:
        # test.sh's prompts after train.sh's: before, the cache was keyed by the class
        # list (a miss: every prompt again); now per prompt (the unseen classes only)
        import shutil
        from jclip.data.lists import read_classes
        from jclip.pipeline.backbones import text_weights
        names = read_classes(os.path.join(HERE, "..", "..", "shared", "data", "jittor4", "classes_b.txt"))
        seen, names = names[:374][:a.classes], names[:a.classes] + names[374:]
        for t in towers:
            cache = os.path.join(a.dir, "prompt-cache")
            shutil.rmtree(cache, ignore_errors=True)
            pcfg = cfg.with_values({"cache_dir": cache})
            t0 = time.perf_counter()
            text_weights(t, names, pcfg)
            record(f"prompts {t.spec.model} ({len(names)} cls)", len(names), time.perf_counter() - t0,
                   "before: list missed")
            shutil.rmtree(cache)
            text_weights(t, seen, pcfg)                       # what train.sh leaves in the cache
            t0 = time.perf_counter()
            text_weights(t, names, pcfg)
            record(f"prompts {t.spec.model} ({len(names)} cls)", len(names), time.perf_counter() - t0,
                   "after: seen from cache")
    del towers, model
    jt.gc()

    icfg = dataclasses.asdict(cfg.inmap)
    if a.inmap_iters:
        icfg["iters"] = a.inmap_iters
    rng = np.random.default_rng(0)
    import jclip.heads.inmap as inmap_mod
    step, steps = inmap_mod.proxy_step, []

    def every_step(x, t):
        """The loop before the early stop: all iterations, whatever the proxies do."""
        x, t = x.astype(np.float32), t.astype(np.float32)
        plabel = inmap_mod.sinkhorn(x @ t.T, icfg["tau_t"], icfg["gamma"], icfg["iters_sinkhorn"])
        target = inmap_mod.harden(plabel, icfg["alpha"]).T.astype(x.dtype) @ x
        p, lr, g = t.copy(), icfg["lr"], np.inf
        for _ in range(icfg["iters"]):
            p, lr, g = step(x, p, target, lr, icfg["tau_i"], g)
        return p

    texts = {key: l2_normalize(rng.normal(size=(403, 512)).astype(np.float32)) for key in feats}
    t0 = time.perf_counter()
    before = {key: every_step(feats[key], texts[key]) for key in feats}
    record(f"InMaP x2 ({icfg['iters']} iters, 403 cls)", len(paths), time.perf_counter() - t0,
           f"before: every step ({2 * icfg['iters']})")
    inmap_mod.proxy_step = lambda *r: (steps.append(1), step(*r))[1]
    t0 = time.perf_counter()
    for key in feats:
        head = InMaP(text_weights=texts[key], **icfg).fit(feats[key])
        assert head.proxies_.tobytes() == before[key].tobytes(), "early stop changed InMaP"
    record(f"InMaP x2 ({icfg['iters']} iters, 403 cls)", len(paths), time.perf_counter() - t0,
           f"after: fixed point ({len(steps)} steps)")
    inmap_mod.proxy_step = step
    spent = 0.0
    for key in feats:
        x = l2_normalize(rng.normal(size=(1496, 512)).astype(np.float32))
        head = LPPlusPlus(text_weights=l2_normalize(rng.normal(size=(374, 512)).astype(np.float32)),
                          epochs=1).fit(x, np.repeat(np.arange(374), 4))
        t0 = time.perf_counter()          # only the logits run at test time
        head.logits(feats[key])
        spent += time.perf_counter() - t0
    record("LP++ logits x2 (374 cls)", len(paths), max(spent, 1e-6), "all at once")

    model = load_convnextv2_file(weights["convnext"], num_classes=130)
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
