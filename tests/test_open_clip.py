"""open_clip's pretrained CLIPs in jclip: architecture facts, parity with
open_clip on files saved as the hub saves them (torch zip .bin and
.safetensors) and loaded with torch blocked, per-tag preprocessing, names,
and clear errors for architectures jclip does not build."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jclip
from jclip import catalog as oc
from jclip.catalog import get_card

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
safetensors_torch = pytest.importorskip("safetensors.torch")
from open_clip import pretrained as oc_pretrained  # noqa: E402
from open_clip.model import CLIP as RefCLIP  # noqa: E402
from test_clip import PROMPTS  # noqa: E402  (20 prompts, odd ones included)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(os.path.dirname(open_clip.__file__), "model_configs")
N_IMAGES = 8


def open_clip_config(name):
    with open(os.path.join(CONFIG_DIR, name + ".json")) as f:
        return json.load(f)


def scaled(name, **vision):
    """open_clip's configuration of ``name`` with smaller widths/layers but its
    own patch size, head width, activation, pooling and embed-dim ratio."""
    cfg = open_clip_config(name)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    head_width = v.get("head_width", 64)
    ratio = cfg["embed_dim"] / t["width"]
    v.update(layers=2, width=4 * head_width, **vision)
    t.update(layers=2, width=3 * 64, heads=3)
    cfg["embed_dim"] = int(ratio * t["width"])
    return cfg


def build_open_clip(cfg, seed=0):
    """open_clip's CLIP for a model configuration, with random weights:
    norm affine parameters and (zero-initialised) biases randomised too, so a
    dropped bias or a wrong normalisation cannot pass."""
    torch.manual_seed(seed)
    model = RefCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"],
                    quick_gelu=cfg.get("quick_gelu", False))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
        for pname, p in model.named_parameters():
            if pname.endswith("bias") and float(p.abs().max()) == 0:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model.eval()


def save_like_the_hub(model, folder):
    """The two files open_clip publishes: open_clip_pytorch_model.bin
    (torch.save of the state dict, zip format) and open_clip_model.safetensors."""
    os.makedirs(folder, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(sd, os.path.join(folder, "open_clip_pytorch_model.bin"))
    safetensors_torch.save_file(sd, os.path.join(folder, "open_clip_model.safetensors"))
    return [os.path.join(folder, f) for f in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")]


def reference_features(model, images, tokens):
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images), normalize=True).numpy()
        txt = model.encode_text(torch.from_numpy(tokens).long(), normalize=True).numpy()
    return img, txt


# Encodes with jclip in a process where `import torch` fails.  Each job: a file
# and either an architecture (JSON facts) to build it with, or a model name to
# convert it as (convert.py PATH --name NAME) and load by name.
JCLIP_SIDE = r"""
import json, os, subprocess, sys
sys.modules['torch'] = None
import numpy as np
import jclip, jittor as jt
import jclip.catalog
from jclip.catalog.schema import architecture_from_dict
from jclip.models.clip import build_model, normalize
from jclip.weights.checkpoint import read_state_dict
jobs, images, tokens = json.load(open(sys.argv[1])), np.load(sys.argv[2]), np.load(sys.argv[3])
for job in jobs:
    if job.get("name"):
        weights = os.path.dirname(job["out"])
        stem = jclip.catalog.get_card(job["name"]).weights_filename()
        r = subprocess.run([sys.executable, "-c", "import sys, runpy; sys.modules['torch'] = None; "
                            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')",
                            job["convert"], job["file"], "--name", job["name"], "--quiet",
                            "--out", os.path.join(weights, stem)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        model, pre = jclip.load(job["name"], device="cpu", weights=weights)
        assert model.architecture.name == job["name"].split("/")[0]
        card = jclip.catalog.get_card(job["name"])   # the tag's own preprocessing
        assert (pre.mean.ravel().tolist(), pre.resize_mode) == (np.float32(card.mean).tolist(), card.resize_mode)
    else:
        arch = architecture_from_dict(job["arch_name"], job["arch"], "job")
        sd, meta = read_state_dict(job["file"])
        model = build_model(sd, source=job["file"], arch=arch)
    res = model.input_resolution
    with jt.no_grad():
        img = normalize(model.encode_image(images[:, :, :res, :res])).numpy()
        txt = normalize(model.encode_text(tokens)).numpy()
    np.savez(job["out"], img=img, txt=txt)
print("ok")
"""


def run_jclip(tmp_path, jobs, images, tokens):
    for job in jobs:
        job.setdefault("convert", os.path.join(ROOT, "convert.py"))
    paths = [tmp_path / "jobs.json", tmp_path / "images.npy", tmp_path / "tokens.npy"]
    paths[0].write_text(json.dumps(jobs))
    np.save(paths[1], images)
    np.save(paths[2], tokens)
    r = subprocess.run([sys.executable, "-c", JCLIP_SIDE, *map(str, paths)], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
    return [np.load(job["out"]) for job in jobs]


def assert_parity(ours, theirs):
    for key, ref in zip(("img", "txt"), theirs):
        got = ours[key]
        assert got.shape == ref.shape, (key, got.shape, ref.shape)
        cos = (got * ref).sum(-1)
        assert cos.min() >= 0.99999, (key, cos.min())
        assert np.abs(got - ref).max() <= 1e-4, (key, np.abs(got - ref).max())


def check_archs(tmp_path, cases):
    """cases: [(label, open_clip config, jclip arch name or None, model name or None)].
    Builds each reference, saves both hub files, encodes with jclip (torch
    blocked) and compares with open_clip on 8 images and 20 prompts."""
    size = max(c[1]["vision_cfg"]["image_size"] for c in cases)
    images = np.random.default_rng(1).standard_normal((N_IMAGES, 3, size, size)).astype(np.float32)
    tokens = jclip.tokenize(PROMPTS)
    jobs, refs = [], []
    for label, cfg, arch_name, name in cases:
        ref = build_open_clip(cfg)
        res = cfg["vision_cfg"]["image_size"]
        expected = reference_features(ref, np.ascontiguousarray(images[:, :, :res, :res]), tokens)
        arch = oc.from_open_clip_config(arch_name or label, cfg)
        for path in save_like_the_hub(ref, str(tmp_path / label)):
            out = str(tmp_path / f"{label}-{os.path.basename(path)}.npz")
            if name:
                out = str(tmp_path / f"w-{label}-{path[-4:]}" / "f.npz")
                os.makedirs(os.path.dirname(out))
            jobs.append(dict(file=path, arch_name=arch.name, arch=arch.to_dict(), name=name, out=out))
            refs.append(expected)
    for ours, theirs in zip(run_jclip(tmp_path, jobs, images, tokens), refs):
        assert_parity(ours, theirs)


# ------------------------------------------------------------------ facts

SHIPPED = [n for n in oc.architectures("clip")]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_architectures_are_open_clips_configs(name):
    assert oc.architectures("clip")[name] == oc.from_open_clip_config(name, open_clip_config(name))


def test_every_open_clip_config_builds_or_is_refused_with_a_reason():
    built, refused = [], []
    for f in sorted(os.listdir(CONFIG_DIR)):
        name = f[:-5]
        try:
            oc.from_open_clip_config(name, open_clip_config(name))
            built.append(name)
        except oc.UnsupportedArchitecture as e:
            assert str(e).startswith(f"architecture {name}: ")
            refused.append(name)
    assert set(SHIPPED) <= set(built)
    assert {"coca_ViT-B-32", "ViT-L-14-CLIPA", "convnext_base", "EVA02-B-16"} <= set(refused)


def test_cards_match_open_clips_pretrained_configs():
    tags = oc.open_clip_cards()
    assert len(tags) >= 15
    families = {"laion2b": 0, "datacomp": 0, "metaclip": 0, "dfn": 0}
    for name, tag in tags.items():
        arch, t = oc.split_name(name)
        ref = oc_pretrained.get_pretrained_cfg(arch, t)
        assert ref, name
        card = get_card(name)
        assert card.hub == ref["hf_hub"].rstrip("/") == tag.hub
        assert card.mean == tuple(ref["mean"]) and card.std == tuple(ref["std"])
        assert (card.interpolation, card.resize_mode) == (ref["interpolation"], ref["resize_mode"])
        # open_clip's quick_gelu flag of the tag is the architecture's activation
        assert (card.architecture.activation == "quick_gelu") == bool(
            ref.get("quick_gelu") or open_clip_config(arch).get("quick_gelu")), name
        assert card.input_size == open_clip_config(arch)["vision_cfg"]["image_size"]
        assert card.url == f"https://huggingface.co/{card.hub}/resolve/main/open_clip_model.safetensors"
        families[next(f for f in families if t.startswith(f))] += 1
    assert all(families.values()), families
    for arch in ("ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-L-14", "ViT-H-14"):
        assert any(n.startswith(arch + "/") for n in tags), arch


def test_every_clip_card_has_its_architecture():
    for card in oc.cards().values():
        if card.family == "clip":
            arch = card.architecture
            assert arch.vision.image_size == card.input_size
    assert get_card("ViT-B/32").architecture.name == "ViT-B-32-quickgelu"
    assert get_card("ViT-H-14/laion2b_s32b_b79k").architecture.vision.heads == 16   # head width 80


def test_available_models_lists_each_once():
    names = jclip.available_models()
    assert len(names) == len(set(names))
    assert names[:9] == ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
                         "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]
    assert set(names[9:]) == set(oc.open_clip_cards())
    assert "ViT-B-32/laion2b_s34b_b79k" in names


def test_names_resolve_and_unbuilt_architectures_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ViT-B-32-laion2b_s34b_b79k\.safetensors: no converted "
                       r"weights.*convert.py --models ViT-B-32/laion2b_s34b_b79k"):
        jclip.load("ViT-B-32/laion2b_s34b_b79k", weights=str(tmp_path))
    with pytest.raises(ValueError, match="coca_ViT-B-32 is not one jclip builds: CoCa"):
        jclip.load("coca_ViT-B-32/laion2b_s13b_b90k", weights=str(tmp_path))
    with pytest.raises(KeyError, match="CLIPA"):
        get_card("ViT-L-14-CLIPA/datacomp1b")
    with pytest.raises(FileNotFoundError, match="not a model name"):
        jclip.load(str(tmp_path / "no" / "such.safetensors"))
    with pytest.raises(oc.UnsupportedArchitecture, match="attentional_pool"):
        cfg = open_clip_config("ViT-B-32")
        cfg["vision_cfg"]["attentional_pool"] = True
        oc.from_open_clip_config("x", cfg)


# ------------------------------------------------------------------ parity

def test_scaled_parity_large_and_huge(tmp_path):
    # ViT-L-14 and ViT-H-14 (GELU; H's head width 80) and H's QuickGELU
    # variant, scaled down (2 layers, 112 px: an 8 x 8 grid of 14-px patches); plus open_clip's pooling options jclip builds
    # (no ln_pre, mean pooling with ln_post after it, last-token text pooling).
    knobs = scaled("ViT-B-32", image_size=64)
    knobs["vision_cfg"].update(no_ln_pre=True, pool_type="avg", final_ln_after_pool=True)
    knobs["text_cfg"]["pool_type"] = "last"
    avg = scaled("ViT-B-32", image_size=64)
    avg["vision_cfg"]["pool_type"] = "avg"
    check_archs(tmp_path, [("ViT-L-14", scaled("ViT-L-14", image_size=112), None, None),
                           ("ViT-H-14", scaled("ViT-H-14", image_size=112), None, None),
                           ("ViT-H-14-quickgelu", scaled("ViT-H-14-quickgelu", image_size=112), None, None),
                           ("knobs", knobs, None, None), ("avg", avg, None, None)])


@pytest.mark.slow
def test_full_size_parity_b32(tmp_path):
    # the user's path: convert.py FILE --name NAME, then jclip.load(NAME)
    check_archs(tmp_path, [("ViT-B-32", open_clip_config("ViT-B-32"), None, "ViT-B-32/laion2b_s34b_b79k"),
                           ("ViT-B-32-quickgelu", open_clip_config("ViT-B-32-quickgelu"), None,
                            "ViT-B-32-quickgelu/metaclip_400m")])


@pytest.mark.slow
def test_full_size_parity_b16(tmp_path):
    check_archs(tmp_path, [("ViT-B-16", open_clip_config("ViT-B-16"), None, "ViT-B-16/datacomp_xl_s13b_b90k")])


# ------------------------------------------------------------ preprocessing

def test_preprocessing_matches_open_clip_for_every_tag_config(photos):
    from jclip.data.images import preprocess_for
    seen = {}
    for name in oc.open_clip_cards():
        c = get_card(name)
        seen.setdefault((c.input_size, c.mean, c.std, c.interpolation, c.resize_mode), name)
    assert len(seen) >= 4   # OpenAI's statistics at 224 and 256, Inception's, DFN's squash
    for (size, mean, std, interp, mode), name in seen.items():
        ref = open_clip.image_transform(size, is_train=False, mean=mean, std=std,
                                        resize_mode=mode, interpolation=interp)
        ours = preprocess_for(name)
        for img in photos():
            got = ours(img)
            assert got.shape == (3, size, size)
            assert np.abs(got - ref(img).numpy()).max() <= 1e-6, name


# Downloads from the hub (through huggingface_hub, its cache, the SHA-256 checks): tests/test_hub.py.


def test_the_parity_check_catches_a_wrong_architecture():
    # What the state dict does not show must come from the architecture: the
    # same weights built with QuickGELU for GELU, or 20 heads for ViT-H's 16
    # (head width 80), give other features.
    from jclip.models.clip import build_model, normalize
    cfg = scaled("ViT-H-14", image_size=56)
    ref = build_open_clip(cfg)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    images = np.random.default_rng(1).standard_normal((2, 3, 56, 56)).astype(np.float32)
    tokens = jclip.tokenize(PROMPTS[:3])
    theirs = reference_features(ref, images, tokens)
    arch = oc.from_open_clip_config("ViT-H-14", cfg)
    wrong = [dataclasses.replace(arch, activation="quick_gelu"),
             dataclasses.replace(arch, vision=dataclasses.replace(arch.vision, heads=arch.vision.width // 64))]
    for a, must_match in [(arch, True)] + [(w, False) for w in wrong]:
        model = build_model(sd, arch=a)
        img = normalize(model.encode_image(images)).numpy()
        txt = normalize(model.encode_text(tokens)).numpy()
        diff = max(np.abs(img - theirs[0]).max(), np.abs(txt - theirs[1]).max())
        assert (diff <= 1e-4) == must_match, (a, diff)


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocess_modes_match_open_clip(photos, mode, interpolation):
    from jclip.data.images import Preprocess
    mean, std = oc_pretrained.INCEPTION_MEAN, oc_pretrained.INCEPTION_STD
    ours = Preprocess(160, mean=mean, std=std, interpolation=interpolation, resize_mode=mode)
    ref = open_clip.image_transform(160, is_train=False, mean=mean, std=std, resize_mode=mode,
                                    interpolation=interpolation)
    for img in photos():
        assert np.abs(ours(img) - ref(img).numpy()).max() <= 1e-6, (img.size, mode, interpolation)
    if (mode, interpolation) != ("shortest", "bicubic"):
        assert ours.id != Preprocess(160, mean=mean, std=std).id   # feature caches keep them apart
