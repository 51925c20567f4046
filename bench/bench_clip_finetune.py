"""clip_finetune and multi-task CoCoOp training steps, jclip (Jittor) vs PyTorch, same run.

clip_finetune: one step = both encoders on a batch of images and its class
prompts, CLIP's symmetric loss, backward to the trained parameters ("proj"
or "last_blocks=1"), AdamW; PyTorch: open_clip's model with the same random
weights (tests/reference.py) and torch.optim.AdamW.  Multi-task CoCoOp: one
5-way 1-shot task (5 cached image features, 5 of 20 training classes);
PyTorch: the official per-image loop (bench_prompt.py's reference); both
always on ViT-B/32's text tower, whatever ``--model``.  Each
measurement runs in its own process; memory is that process's peak RSS
during the steps and its growth over the RSS before them.

    .venv/bin/python bench/bench_clip_finetune.py [--model ViT-B/32] [--batch 10] [--steps 3]
"""
import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_prompt import NAMES, features, measure  # noqa: E402  (sys.path set above)


def images(model_name, batch):
    from reference import CONFIGS
    size = CONFIGS[model_name][1]["image_size"]
    return np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32), \
        np.arange(batch) % 10


def jittor_finetune(model_name, trainable, batch, steps):
    import jclip  # noqa: F401  (before jittor)
    from jclip.finetune.contrastive import ClipFinetune
    from jclip.models.clip import build_model
    from reference import build_reference
    _, state = build_reference(model_name)
    model = build_model(state)
    del state
    x, y = images(model_name, batch)
    ft = ClipFinetune(model, NAMES[:10], trainable=trainable, epochs=1, batch_size=batch, seed=0)
    return measure(lambda: ft.fit(x, y), steps)          # one epoch = one step


def torch_finetune(model_name, trainable, batch, steps):
    import torch
    import jclip  # noqa: F401
    from jclip.finetune.contrastive import trainable_names
    from jclip.models.clip import build_model
    from jclip.models.tokenizer import tokenize
    from reference import build_reference, clip_loss
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ref, state = build_reference(model_name)
    names = trainable_names(build_model(state), trainable)     # the same parameters as jclip's
    del state
    params = dict(ref.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
    chosen = [params[n] for n in names]
    for p in chosen:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(chosen, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    x, y = images(model_name, batch)
    x = torch.from_numpy(x)
    tokens = torch.from_numpy(tokenize([f"a photo of a {n}." for n in NAMES[:10]]))[torch.from_numpy(y)]

    def step():
        loss = clip_loss(ref, x, tokens.long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return measure(step, steps)


def jittor_cocoop_episode(model_name, steps):
    import jclip  # noqa: F401
    from jclip.heads.cocoop import CoCoOp
    from jclip.models.clip import build_model
    from reference import CONFIGS, build_reference
    _, state = build_reference(model_name)
    model = build_model(state)
    del state
    x, _ = features(40, CONFIGS[model_name][0])
    y = np.repeat(np.arange(20), 2)
    learner = CoCoOp(model, NAMES[:20], seed=0, epochs=1, episode="5-way 1-shot",
                     episodes_per_epoch=1, warmup_epochs=0)
    return measure(lambda: learner.fit(x, y), steps)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ViT-B/32", help="a tests/reference.py config (ViT-B/32, tiny-vit, ...)")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "WHAT"))
    a = p.parse_args()
    if a.worker:
        fw, what = a.worker
        if what == "cocoop":
            if fw == "jittor":
                out = jittor_cocoop_episode("ViT-B/32", a.steps)
            else:
                from bench_prompt import torch_steps
                out = torch_steps("cocoop", 5, 5, a.steps, truncate=True)
        else:
            out = (jittor_finetune if fw == "jittor" else torch_finetune)(a.model, what, a.batch, a.steps)
        print("RESULT " + json.dumps(out))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}; {a.model}, clip_finetune batch {a.batch}; "
          f"CoCoOp: one 5-way 1-shot task")
    rows = []
    for what in ("proj", "last_blocks=1", "cocoop"):
        for fw, label in (("jittor", "jclip (Jittor)"), ("torch", "PyTorch reference")):
            cmd = [sys.executable, os.path.abspath(__file__), "--model", a.model, "--batch", str(a.batch),
                   "--steps", str(a.steps), "--worker", fw, what]
            res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, log_silent="1"))
            line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
            if res.returncode or not line:
                sys.exit(f"{label} {what} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
            r = json.loads(line[0][7:])
            name = "multi-task CoCoOp" if what == "cocoop" else f"clip_finetune {what}"
            rows.append((name, label, r))
            print(f"{name:>26} | {label:<18} | step {r['step_s']:.3f} s (min {r['min_s']:.3f}) | "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB (+{r['step_extra_mb']:.0f} MB)", flush=True)
    print("\n| training | implementation | step (s, median) | peak RSS (MB) | RSS growth in step (MB) |")
    print("|---|---|---|---|---|")
    for name, label, r in rows:
        print(f"| {name} | {label} | {r['step_s']:.3f} | {r['peak_rss_mb']:.0f} | {r['step_extra_mb']:.0f} |")


if __name__ == "__main__":
    main()
