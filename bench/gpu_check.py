"""The GPU check: everything jclip runs on CUDA, measured in one go (bench/gpu_check.sh).

    .venv/bin/python bench/gpu_check.py [--device cuda|cpu] [--out bench/RESULTS_gpu.md] [--work DIR]

1. Jittor's CUDA build and a tiny op (a matmul against numpy).
2. CLIP ViT-B/32, RN101 and ConvNeXt-V2-B (random weights) on the device
   against jclip's own CPU outputs of the same weights and inputs (cosine
   >= 0.99999 per row).
3. images/s at batch 64 and 256, fp32 and fp16 (fp16 against fp32: cosine),
   with the peak GPU memory (nvidia-smi, sampled every 0.2 s).
4. LP++ and InMaP fits at contest size on the device.
5. process.py, train.sh (LP++, the dog head's fit) and test.sh on a generated
   contest-sized set (6,000 test images, 403 classes, random weights), wall
   time and peak memory of each.

``--device cpu`` runs the same steps with tiny models and a tiny set (the
fast tier runs it, tests/test_gpu_check.py); there step 2 compares the fused
CPU kernels with Jittor's generic ops.  The report goes to ``--out``
(rewritten atomically after each step, so a run cut short by the time
limit still leaves what it measured); the exit status is 1 when a parity check or a step
failed, and the report says which.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
os.environ.setdefault("log_silent", "1")
import jclip  # noqa: E402  (configures Jittor)
import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402
import contest_set  # noqa: E402

SIZES = {
    "cuda": dict(clip=["ViT-B/32", "RN101"], convnext="base", batches=(64, 256), dtypes=("float32", "float16"),
                 per_domain=None, train_per_class=8, val_per_class=4, test_images=6000,
                 lpp=(374, 4, 512), inmap=(6000, 403, 512), lpp_epochs=300, inmap_iters=2000,
                 dog_epochs=10, dog_size=224, batch_size=256),
    # fp16 is timed on CUDA only: Jittor's CPU kernels have no fp16 GEMM
    "cpu": dict(clip=["tiny-vit", "tiny-rn"], convnext="atto", batches=(2, 4), dtypes=("float32",),
                per_domain={"Animal": 2, "Caltech-101": 2, "Food-101": 2, "Thu-dog": 5, "Stanford-Cars": 3},
                train_per_class=6, val_per_class=2, test_images=30, lpp=(14, 4, 32), inmap=(30, 17, 32),
                lpp_epochs=10, inmap_iters=10, dog_epochs=1, dog_size=32, batch_size=16),
}
COSINE_MIN = 0.99999


class GpuMemory:
    """Peak used GPU memory (MiB) while the ``with`` block runs, from nvidia-smi; None without it."""

    def __enter__(self):
        self.peak, self.proc = None, None
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                          "-lms", "200"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return self
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                used = float(line.split()[0])
            except (ValueError, IndexError):
                continue
            self.peak = used if self.peak is None else max(self.peak, used)

    def __exit__(self, *exc):
        if self.proc is not None:
            time.sleep(0.3)
            self.proc.terminate()
            self.proc.wait()
        return False

    def text(self):
        return "n/a (no nvidia-smi)" if self.peak is None else f"{self.peak:.0f} MiB"


def set_device(device):
    jt.flags.use_cuda = int(device == "cuda")


def forward(model, x, kind):
    x = x if isinstance(x, jt.Var) else jt.array(x)
    with jt.no_grad():
        out = model.encode_image(x) if kind == "clip" else model(x)
        return out.numpy()


def cosine(a, b):
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def label(name, sizes):
    return f"ConvNeXt-V2-{name}" if name == sizes["convnext"] else name


def build(name, sizes):
    if name == sizes["convnext"]:
        return contest_set.random_convnext(name), "convnext", 224 if name == "base" else 32
    model = contest_set.random_clip(name)
    return model, "clip", model.input_resolution


def tiny_op(device, report):
    set_device(device)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 48), dtype=np.float32), rng.standard_normal((48, 32), dtype=np.float32)
    start = time.perf_counter()
    ours = (jt.array(a) @ jt.array(b) + 1.0).numpy()
    err = float(np.abs(ours - (a @ b + 1.0)).max())
    ok = err < 1e-4
    report.append(f"- tiny op on {device} (64x48 @ 48x32 + 1, against numpy): max abs error {err:.2e}, "
                  f"{time.perf_counter() - start:.1f} s including the compile: {'ok' if ok else 'FAILED'}")
    return ok


def parity(name, device, sizes, report):
    """The device's output against jclip's CPU output (on CPU: fused vs generic ops)."""
    model, kind, res = build(name, sizes)
    x = np.random.default_rng(1).standard_normal((4, 3, res, res)).astype(np.float32)
    set_device("cpu")
    if device == "cpu":
        os.environ["JCLIP_FUSED_CPU"] = "0"
    try:
        ref = forward(model, x, kind)
    finally:
        os.environ.pop("JCLIP_FUSED_CPU", None)
    set_device(device)
    ours = forward(model, x, kind)
    cos = cosine(ours, ref)
    what = "CPU fused kernels vs CPU generic ops" if device == "cpu" else "CUDA vs jclip CPU"
    ok = cos >= COSINE_MIN
    report.append(f"| {label(name, sizes)} | {what} | {cos:.7f} | {float(np.abs(ours - ref).max()):.2e} | "
                  f"{'ok' if ok else 'FAILED'} |")
    return ok


def throughput(name, device, sizes, report):
    set_device(device)
    for dtype in sizes["dtypes"]:
        model, kind, res = build(name, sizes)
        if dtype == "float16":
            model.float16()
        for batch in sizes["batches"]:
            x = jt.array(np.random.default_rng(2).standard_normal((batch, 3, res, res)).astype(dtype))
            try:
                with GpuMemory() as mem:
                    forward(model, x, kind)            # compile and warm up
                    times = []
                    for _ in range(2):
                        start = time.perf_counter()
                        forward(model, x, kind)
                        times.append(time.perf_counter() - start)
                row = f"{batch / min(times):.1f} | {mem.text()}"
            except Exception as e:                     # a failed dtype is a result, not the end of the check
                row = f"failed: {str(e).strip().splitlines()[0][:120]} | "
            report.append(f"| {label(name, sizes)} | {dtype} | {batch} | {row} |")
        del model
        jt.gc()


def fit_heads(device, sizes, report):
    from jclip.heads.inmap import InMaP
    from jclip.heads.lpp import LPPlusPlus
    set_device(device)
    rng = np.random.default_rng(3)
    ok = True

    def unit(a):
        return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)

    n_cls, shots, dim = sizes["lpp"]
    text = unit(rng.standard_normal((n_cls, dim)))
    labels = np.repeat(np.arange(n_cls), shots)
    feats = unit(text[labels] + 0.5 * rng.standard_normal((len(labels), dim)))
    n_test, n_all, dim_t = sizes["inmap"]
    text_all = unit(rng.standard_normal((n_all, dim_t)))
    test = unit(text_all[rng.integers(0, n_all, n_test)] + 0.5 * rng.standard_normal((n_test, dim_t)))
    for name, head, args in (
            ("LP++", LPPlusPlus(text_weights=text, epochs=sizes["lpp_epochs"]), (feats, labels)),
            ("InMaP", InMaP(text_weights=text_all, iters=sizes["inmap_iters"]), (test,))):
        start = time.perf_counter()
        try:
            with GpuMemory() as mem:
                head.fit(*args)
                pred = head.predict(args[0])
            acc = float((pred == labels).mean()) if name == "LP++" else None
            extra = f", train accuracy {acc:.3f}" if acc is not None else ""
            report.append(f"- {name} fit on {device} ({args[0].shape[0]} x {args[0].shape[1]}): "
                          f"{time.perf_counter() - start:.1f} s, peak GPU memory {mem.text()}{extra}")
        except Exception as e:
            ok = False
            report.append(f"- {name} fit on {device}: FAILED: {str(e).strip().splitlines()[0][:200]}")
    return ok


def run_timed(cmd, cwd, log):
    """(seconds, peak RSS MiB, return code) of one command; its output goes to ``log``."""
    start, peak = time.perf_counter(), 0
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHON=sys.executable))
        while proc.poll() is None:   # the scripts exec python: this pid is the one that grows
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    hwm = [line for line in f if line.startswith("VmHWM:")]
                peak = max(peak, int(hwm[0].split()[1]) // 1024) if hwm else peak
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.2)
    return time.perf_counter() - start, peak, proc.returncode


def pipeline(device, sizes, work, report):
    """process.py, train.sh and test.sh on a generated contest-sized set."""
    data = os.path.join(work, "Dataset")
    os.makedirs(data)
    names, seen = contest_set.class_names(sizes["per_domain"])
    start = time.perf_counter()
    test_dir = contest_set.make_dataset(data, names, seen, sizes["train_per_class"], sizes["test_images"])
    weights = os.path.join(work, "weights")
    os.makedirs(weights)
    vit, rn = sizes["clip"]
    paths = {k: contest_set.write_weights(contest_set.random_clip(m), os.path.join(weights, f"{k}.safetensors"), m)
             for k, m in (("vit", vit), ("rn", rn))}
    cnx_name = f"convnextv2_{sizes['convnext']}"
    paths["cnx"] = contest_set.write_weights(contest_set.random_convnext(sizes["convnext"]),
                                             os.path.join(weights, "cnx.safetensors"), cnx_name)
    report.append(f"- generated {len(names)} classes ({len(seen)} seen), {len(seen) * sizes['train_per_class']} "
                  f"training and {sizes['test_images']} test images and three weights files in "
                  f"{time.perf_counter() - start:.0f} s")
    dogs = [i for i, c in enumerate(seen) if c.startswith("Thu-dog_")]
    with open(os.path.join(REPO, "jclip", "pipeline", "default.json")) as f:
        cfg = json.load(f)
    cfg["data"].update(root=data, lists=os.path.join(work, "out", "lists"), val_per_class=sizes["val_per_class"])
    cfg.update(out_dir=os.path.join(work, "out"), cache_dir=os.path.join(work, "cache"), device=device,
               batch_size=sizes["batch_size"])
    cfg["backbones"] = {"vit": {"model": vit, "weights": paths["vit"]}, "rn": {"model": rn, "weights": paths["rn"]}}
    cfg["lpp"].update(epochs=sizes["lpp_epochs"], val_per_class=min(4, sizes["val_per_class"]))
    cfg["inmap"].update(iters=sizes["inmap_iters"])
    cfg["dog_head"].update(model=cnx_name, weights=paths["cnx"], epochs=sizes["dog_epochs"],
                           size=sizes["dog_size"], val_per_class=min(4, sizes["val_per_class"]))
    cfg["cascade"].update(unseen_from=len(seen), dog_range=[dogs[0], dogs[-1]])
    cfg["budget"].update(num_classes=len(names))
    config = os.path.join(work, "config.json")
    with open(config, "w") as f:
        json.dump(cfg, f, indent=1)
    result = os.path.join(work, "result.txt")
    ok = True
    report.append("\n| step | wall s | peak RSS MiB | peak GPU memory | status |\n|---|---:|---:|---|---|")
    for step, cmd in (
            ("process.py", [sys.executable, "process.py", "--root", data, "--out", cfg["data"]["lists"],
                            "--val-per-class", str(sizes["val_per_class"])]),
            ("train.sh", ["bash", "train.sh", "--config", config]),
            ("test.sh", ["bash", "test.sh", test_dir, os.path.join(data, "classes_b.txt"),
                         "--config", config, "--result", result])):
        log = os.path.join(work, f"{step}.log")
        with GpuMemory() as mem:
            secs, rss, rc = run_timed(cmd, REPO, log)
        status = "ok" if rc == 0 else f"FAILED (exit {rc}, log {log})"
        if rc != 0:
            ok = False
            with open(log, errors="replace") as f:
                tail = f.read().strip().splitlines()[-3:]
            status += ": " + " / ".join(t.strip()[:160] for t in tail)
        report.append(f"| {step} | {secs:.1f} | {rss} | {mem.text()} | {status} |")
        if rc != 0:
            break
    if ok:
        with open(result) as f:
            lines = f.read().splitlines()
        ok = len(lines) == sizes["test_images"] and all(len(line.split(" ")) == 6 for line in lines)
        report.append(f"\nresult.txt: {len(lines)} lines of 5 ids: {'ok' if ok else 'FAILED'}")
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS_gpu.md"))
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not jt.has_cuda:
        print("gpu_check: --device cuda: Jittor has no CUDA here (no GPU driver or nvcc); "
              "use --device cpu for the small CPU run", file=sys.stderr)
        return 2
    sizes = SIZES[args.device]
    start = time.perf_counter()
    report = [f"# GPU check ({args.device})\n", f"`bench/gpu_check.sh --device {args.device}`, "
              f"{time.strftime('%Y-%m-%d %H:%M')}; jittor {jt.__version__}, {os.cpu_count()} CPU threads."]
    if args.device == "cuda":
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
        report.append(f"GPU: {gpu or 'unknown'}; nvcc: {jt.flags.nvcc_path}.")
    from jclip.io import atomic_write_text

    def flush(final=False):
        atomic_write_text(args.out, "\n".join(report + ([] if final else ["\n(running...)"])) + "\n")

    report.append("\n## Build and a tiny op\n")
    ok = tiny_op(args.device, report)
    flush()
    models = sizes["clip"] + [sizes["convnext"]]
    report.append(f"\n## Parity (same random weights, 4 images; cosine >= {COSINE_MIN})\n")
    report.append("| model | compared | min cosine | max abs diff | status |\n|---|---|---:|---:|---|")
    for name in models:
        ok &= parity(name, args.device, sizes, report)
    flush()
    report.append("\n## Throughput (forward only, best of 2 after a warm-up)\n")
    report.append("| model | dtype | batch | images/s | peak GPU memory |\n|---|---|---:|---:|---|")
    for name in models:
        throughput(name, args.device, sizes, report)
        flush()
    report.append("\n## Heads\n")
    ok &= fit_heads(args.device, sizes, report)
    flush()
    report.append("\n## The contest pipeline on a generated set\n")
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        ok &= pipeline(args.device, sizes, work, report)
    report.append(f"\nTotal {time.perf_counter() - start:.0f} s; overall: {'ok' if ok else 'FAILED'}.")
    flush(final=True)
    print("\n".join(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
