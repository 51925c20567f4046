"""ConvNeXt-V2: jclip (Jittor) vs timm (PyTorch) on the same weights, one run.

Forward images/s (eval, no grad) and one full training step (forward, backward,
AdamW update of every parameter) at the same batch, resolution and thread
count. Timings are the best of --repeat runs after a warm-up run (Jittor
compiles each new op shape on its first run).

    .venv/bin/python bench/bench_convnext.py --model base --batch 32 --threads 2
"""
import argparse
import os
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="base")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--train-batch", type=int, default=None,
                   help="batch for the training step (default: --batch)")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--profile", action="store_true",
                   help="print Jittor's per-op profile of one forward")
    return p.parse_args()


def best_of(fn, repeat):
    fn()  # warm-up (Jittor: compile)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    a = parse()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import numpy as np
    import jclip  # noqa: F401  (before jittor)
    import jittor as jt
    import timm
    import torch
    from jclip.models.convnext import load_convnextv2, timm_to_official

    torch.set_num_threads(a.threads)
    tb = a.train_batch or a.batch
    ref = timm.create_model(f"convnextv2_{a.model}", pretrained=False).eval()
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    model = load_convnextv2(timm_to_official(sd))
    x = np.random.RandomState(0).randn(a.batch, 3, a.res, a.res).astype(np.float32)
    xt, xj = torch.from_numpy(x), jt.array(x)
    labels = np.random.RandomState(1).randint(0, 1000, tb)

    def timm_fwd():
        with torch.no_grad():
            ref(xt)

    def jt_fwd():
        with jt.no_grad():
            model(xj).sync()
        jt.sync_all(True)

    rows = []
    rows.append(("forward images/s", a.batch / best_of(timm_fwd, a.repeat),
                 a.batch / best_of(jt_fwd, a.repeat)))

    if a.profile:
        jt.profiler.start(0, 0)
        jt_fwd()
        jt.profiler.stop()
        jt.profiler.report()

    if not a.skip_train:
        ref.train()
        model.train()
        opt_t = torch.optim.AdamW(ref.parameters(), lr=1e-4)
        opt_j = jt.optim.AdamW(model.parameters(), lr=1e-4)
        xt2, xj2 = xt[:tb], jt.array(x[:tb])
        yt, yj = torch.from_numpy(labels), jt.array(labels)

        def timm_step():
            loss = torch.nn.functional.cross_entropy(ref(xt2), yt)
            opt_t.zero_grad()
            loss.backward()
            opt_t.step()

        def jt_step():
            loss = jt.nn.cross_entropy_loss(model(xj2), yj)
            opt_j.step(loss)
            jt.sync_all(True)

        rows.append((f"train step s (batch {tb})", best_of(timm_step, a.repeat),
                     best_of(jt_step, a.repeat)))

    print(f"\nConvNeXt-V2-{a.model}, batch {a.batch}, {a.res}px, {a.threads} threads, "
          f"best of {a.repeat}")
    print(f"{'':28s} {'timm':>10s} {'jclip':>10s} {'jclip/timm speed':>18s}")
    for name, t, j in rows:
        speed = j / t if "images/s" in name else t / j
        print(f"{name:28s} {t:10.3f} {j:10.3f} {speed:18.2f}")


if __name__ == "__main__":
    main()
