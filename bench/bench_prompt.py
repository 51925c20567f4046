"""One CoOp and one CoCoOp training step in jclip (Jittor) vs PyTorch (CPU).

ViT-B/32 text tower with random weights (tests/reference.py), a batch of
cached image features (8 by default) and 10 classes; a step = forward through
the frozen text encoder, backward to the learner's parameters, SGD update.
The PyTorch side is written after KaiyangZhou/CoOp (prompt assembled by
concatenating prefix / ctx / suffix, 77-token prompts as the official code);
a second PyTorch row cuts prompts after the last EOT like jclip does, so the
same work is compared.  Each measurement runs in its own process; memory is
that process's peak RSS during the steps (VmHWM reset before them), and its
growth over the RSS before the first step.

    .venv/bin/python bench/bench_prompt.py [--batch 8] [--classes 10] [--steps 5]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))

NAMES = ["dog", "cat", "golden retriever", "red panda", "airliner", "tabby cat",
         "pizza", "sunflower", "fire truck", "snow leopard", "tree frog", "goldfish",
         "church", "tractor", "violin", "lighthouse", "volcano", "strawberry", "koala", "umbrella"]


def rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def features(batch, dim, seed=0):
    x = np.random.default_rng(seed).normal(size=(batch, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.arange(batch) % 7


# ----------------------------------------------------------------- workers

def jittor_steps(method, batch, classes, steps):
    import jclip  # noqa: F401  (before jittor)
    from jclip.models.clip import build_model
    from jclip.heads.cocoop import CoCoOp
    from jclip.heads.coop import CoOp
    from reference import build_reference
    _, state = build_reference("ViT-B/32")
    model = build_model(state)
    del state
    cls = CoOp if method == "coop" else CoCoOp
    # one epoch of one batch; fit also rebuilds the prompt table (a few ms)
    learner = cls(model, NAMES[:classes], seed=0, epochs=1, batch_size=batch, warmup_epochs=0)
    x, y = features(batch, 512)

    def step():
        learner.fit(x, y)
    return measure(step, steps)


def torch_steps(method, batch, classes, steps, truncate):
    import torch
    import jclip  # noqa: F401
    from jclip.models.tokenizer import tokenize
    from reference import build_reference
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ref, state = build_reference("ViT-B/32")
    del state
    for p in ref.parameters():
        p.requires_grad_(False)
    names = NAMES[:classes]
    tokens = torch.from_numpy(tokenize(["X X X X " + n + "." for n in names]))
    eot = tokens.argmax(-1)
    length = int(eot.max()) + 1 if truncate else tokens.shape[1]
    with torch.no_grad():
        emb = ref.token_embedding(tokens[:, :length])
        init = ref.token_embedding(torch.from_numpy(tokenize(["a photo of a"])))[0, 1:5]
    prefix, suffix = emb[:, :1], emb[:, 5:]          # class-token position "end"
    ctx = torch.nn.Parameter(init.clone())
    params = [ctx]
    if method == "cocoop":
        meta = torch.nn.Sequential(torch.nn.Linear(512, 32), torch.nn.ReLU(), torch.nn.Linear(32, 512))
        params += list(meta.parameters())
    opt = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)
    mask = ref.attn_mask[:length, :length]
    x, y = map(torch.from_numpy, features(batch, 512))

    def encode(prompts):
        h = prompts + ref.positional_embedding[:length]
        h = ref.ln_final(ref.transformer(h, attn_mask=mask))
        h = h[torch.arange(len(h)), eot] @ ref.text_projection
        return h / h.norm(dim=-1, keepdim=True)

    def step():
        if method == "coop":
            c = ctx.unsqueeze(0).expand(classes, -1, -1)
            text = encode(torch.cat([prefix, c, suffix], 1))
            logits = 100.0 * x @ text.t()
        else:                                      # CoCoOp's per-image loop
            bias = meta(x)
            rows = []
            for b in range(batch):
                c = (ctx + bias[b]).unsqueeze(0).expand(classes, -1, -1)
                rows.append(100.0 * encode(torch.cat([prefix, c, suffix], 1)) @ x[b])
            logits = torch.stack(rows)
        loss = torch.nn.functional.cross_entropy(logits, y.long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return measure(step, steps)


def measure(step, steps):
    step()                                         # warm-up (Jittor compiles here)
    base = rss_mb("VmRSS")
    reset_peak()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = rss_mb("VmHWM")
    return dict(step_s=float(np.median(times)), min_s=float(np.min(times)),
                peak_rss_mb=peak, step_extra_mb=peak - base)


# ----------------------------------------------------------------- driver

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "METHOD", "TRUNCATE"))
    a = p.parse_args()
    if a.worker:
        fw, method, trunc = a.worker
        if fw == "jittor":
            out = jittor_steps(method, a.batch, a.classes, a.steps)
        else:
            out = torch_steps(method, a.batch, a.classes, a.steps, trunc == "1")
        print("RESULT " + json.dumps(out))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}; batch {a.batch}, {a.classes} classes, ViT-B/32 text tower")
    rows = []
    for method in ("coop", "cocoop"):
        for fw, trunc, label in (("jittor", "1", "jclip (Jittor)"),
                                 ("torch", "1", "PyTorch, same cut prompts"),
                                 ("torch", "0", "PyTorch, 77 tokens (official)")):
            cmd = [sys.executable, os.path.abspath(__file__), "--batch", str(a.batch), "--classes",
                   str(a.classes), "--steps", str(a.steps), "--worker", fw, method, trunc]
            env = dict(os.environ, log_silent="1")
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
            if res.returncode or not line:
                sys.exit(f"{label} {method} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
            r = json.loads(line[0][7:])
            rows.append((method, label, r))
            print(f"{method:>7} | {label:<30} | step {r['step_s']:.3f} s (min {r['min_s']:.3f}) | "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB (+{r['step_extra_mb']:.0f} MB in the step)",
                  flush=True)
    print("\n| method | implementation | step (s, median) | peak RSS (MB) | RSS growth in step (MB) |")
    print("|---|---|---|---|---|")
    for method, label, r in rows:
        print(f"| {method} | {label} | {r['step_s']:.3f} | {r['peak_rss_mb']:.0f} | {r['step_extra_mb']:.0f} |")


if __name__ == "__main__":
    main()
