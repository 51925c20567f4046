"""A generated contest set and random-weight checkpoints, for gpu_check.py.

The layout is the contest's (Dataset/TrainSet/<Domain>/<class>/N.jpg,
train.txt, classes.txt, classes_b.txt, TestSetB/image_N.jpg); class names
are the real ones from ../shared/data/jittor4 where present (else
synthetic ones), the unseen Stanford-Cars classes only in classes_b.txt.
Images are small noisy JPEGs whose colour depends on the class, written
fast (one shared noise field, shifted per image).  Weights are jclip's own
random initialisation, written as jclip weights files through the same
``convert_checkpoint`` that convert.py runs.
"""
import os
import tempfile

import numpy as np
from PIL import Image

REAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "jittor4")
DOMAINS = ("Animal", "Caltech-101", "Food-101", "Thu-dog", "Stanford-Cars")


def class_names(per_domain=None):
    """(all names in classes_b order, seen names): the real lists, or
    ``per_domain`` {domain: n} of them (synthetic names without the lists)."""
    path = os.path.join(REAL, "classes_b.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            real = [line.rsplit(" ", 1)[0] for line in f.read().splitlines() if line.strip()]
    else:
        counts = {"Animal": 52, "Caltech-101": 91, "Food-101": 101, "Thu-dog": 130, "Stanford-Cars": 29}
        real = [f"{d}_class{i}" for d in DOMAINS for i in range(counts[d])]
    if per_domain:
        real = [c for d in DOMAINS for c in [c for c in real if c.startswith(d + "_")][:per_domain.get(d, 0)]]
    seen = [c for c in real if not c.startswith("Stanford-Cars_")]
    return real, seen


def _image(noise, cls, n, size):
    base = np.array([(cls * 67) % 256, (cls * 131) % 256, (cls * 29 + 80) % 256], np.float32)
    shift = (n * 7919) % (noise.shape[0] - size)
    arr = base + noise[shift:shift + size, shift:shift + size]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_dataset(root, names, seen, train_per_class, test_images, size=64):
    """Write the contest layout under ``root``; returns the test folder."""
    noise = np.random.default_rng(0).normal(0, 30, (size * 8, size * 8, 3)).astype(np.float32)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(f"{c} {i}" for i, c in enumerate(seen)))
    with open(os.path.join(root, "classes_b.txt"), "w") as f:
        f.write("\n".join(f"{c} {i}" for i, c in enumerate(names)))
    lines = []
    for cid, c in enumerate(seen):
        domain, folder = c.split("_", 1)
        os.makedirs(os.path.join(root, "TrainSet", domain, folder), exist_ok=True)
        for n in range(1, train_per_class + 1):
            rel = f"TrainSet/{domain}/{folder}/{n}.jpg"
            _image(noise, cid, cid * 1000 + n, size).save(os.path.join(root, rel), quality=85)
            lines.append(f"{rel} {cid}")
    with open(os.path.join(root, "train.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    test = os.path.join(root, "TestSetB")
    os.makedirs(test)
    for n in range(1, test_images + 1):
        _image(noise, n % len(names), n, size).save(os.path.join(test, f"image_{n}.jpg"), quality=85)
    return test


def clip_config(name):
    """CLIP constructor arguments: OpenAI's ViT-B/32 and RN101, or tiny ones."""
    text = dict(context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                transformer_layers=12)
    tiny_text = dict(text, transformer_width=64, transformer_heads=1, transformer_layers=2)
    return {
        "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                         vision_patch_size=32, **text),
        "RN101": dict(embed_dim=512, image_resolution=224, vision_layers=(3, 4, 23, 3), vision_width=64,
                      vision_patch_size=None, **text),
        "tiny-vit": dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64,
                         vision_patch_size=8, **tiny_text),
        "tiny-rn": dict(embed_dim=32, image_resolution=64, vision_layers=(1, 2, 1, 1), vision_width=16,
                        vision_patch_size=None, **tiny_text),
    }[name]


def random_clip(name, seed=0):
    import jittor as jt
    from jclip.models.clip import CLIP
    jt.set_global_seed(seed)
    model = CLIP(**clip_config(name))
    model.eval()
    return model


def random_convnext(size, seed=0):
    import jittor as jt
    from jclip.models.convnext import convnextv2
    jt.set_global_seed(seed)
    model = convnextv2(size)
    model.eval()
    return model


def write_weights(model, out, name):
    """``model``'s weights as a jclip file at ``out``, through convert.py's converter."""
    from jclip.weights.checkpoint import save_state_dict
    from jclip.weights.convert import convert_checkpoint
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, os.path.basename(out))
        save_state_dict(src, state, {"model": name})
        convert_checkpoint(src, out, model=name)
    return out
