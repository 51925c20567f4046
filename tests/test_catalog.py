"""jclip.catalog: every card's derived state-dict layout against the reference
libraries' own models (open_clip for every CLIP card, OpenAI's included, timm
for every ConvNeXt-V2 size; built on torch's meta device, so no memory and no
download), the checks built on it, the schema's errors and add_model_config."""
import json
import os
import subprocess
import sys

import pytest

from jclip import catalog
from jclip.catalog import store
from jclip.catalog.naming import timm_to_official

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fresh_catalog():
    """The package's catalogue again after the test (add_model_config changes it)."""
    store.tables.cache_clear()
    yield
    store.tables.cache_clear()


def _meta(shape):
    torch = pytest.importorskip("torch")
    return torch.empty(shape, device="meta")


# ------------------------------------------------------------- layouts

def test_every_clip_card_layout_is_open_clips_state_dict():
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    names = catalog.available("clip")
    assert len(names) >= 29 and names[:2] == ["RN50", "RN101"]
    seen = set()
    for name in names:
        arch = catalog.get_card(name).architecture
        if arch.name in seen:
            continue
        seen.add(arch.name)
        with torch.device("meta"):
            ref = open_clip.model.CLIP(**open_clip.get_model_config(arch.name))
        want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        assert catalog.state_dict_layout(arch) == want, name
        # the checks accept the reference and infer the same layout from it
        family, _ = catalog.prepare_state_dict(ref.state_dict(), name)
        assert family == "clip"
        assert catalog.state_dict_layout(catalog.clip_facts(ref.state_dict())) == want, name
    assert {"RN50-quickgelu", "ViT-L-14-336-quickgelu", "ViT-H-14"} <= seen


def test_every_convnext_size_layout_is_timms_state_dict():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    archs = catalog.architectures("convnextv2")
    assert [a.size for a in archs.values()] == ["atto", "femto", "pico", "nano", "tiny", "base", "large", "huge"]
    for name, arch in archs.items():
        assert catalog.get_card(name).architecture == arch      # every size has its card
        with torch.device("meta"):
            ref = timm.create_model(name, pretrained=False)
        official = timm_to_official(ref.state_dict())
        assert catalog.state_dict_layout(arch, 1000) == {k: tuple(v.shape) for k, v in official.items()}, name
        family, _ = catalog.prepare_state_dict(ref.state_dict(), name)   # timm names accepted
        inferred, head = catalog.convnext_facts(official)
        assert (inferred.depths, inferred.dims, head) == (arch.depths, arch.dims, 1000)
    assert catalog.state_dict_layout(archs["convnextv2_base"], 0).keys().isdisjoint({"head.weight", "head.bias"})


def test_checks_name_the_missing_or_misshaped_tensor():
    sd = {k: _meta(s) for k, s in catalog.state_dict_layout(catalog.get_architecture("RN50-quickgelu")).items()}
    catalog.prepare_state_dict(sd, "rn.pt")
    bad = dict(sd, **{"visual.layer2.0.conv2.weight": _meta((128, 128, 3, 1))})
    with pytest.raises(catalog.StateDictError, match=r"rn\.pt: tensor 'visual.layer2.0.conv2.weight' has shape "
                                                     r"\(128, 128, 3, 1\), expected \(128, 128, 3, 3\)"):
        catalog.prepare_state_dict(bad, "rn.pt")
    gap = {k: v for k, v in sd.items() if not k.startswith("transformer.resblocks.5.")}
    with pytest.raises(catalog.StateDictError, match="missing tensor 'transformer.resblocks.5.attn.in_proj_weight'"):
        catalog.prepare_state_dict(gap, "rn.pt")
    # a named architecture is checked as named: ViT-B/32's weights are not ViT-B/16's
    vit = catalog.state_dict_layout(catalog.get_card("ViT-B/32").architecture)
    with pytest.raises(catalog.StateDictError, match="visual.positional_embedding"):
        catalog.prepare_state_dict({k: _meta(s) for k, s in vit.items()}, "b32",
                                   arch=catalog.get_card("ViT-B/16").architecture)
    with pytest.raises(catalog.StateDictError, match="unknown architecture"):
        catalog.prepare_state_dict({"fc.weight": _meta((2, 2))}, "x.pt")


# ------------------------------------------------------- schema, loading

def test_catalog_imports_without_numpy_jittor_or_torch():
    code = ("import sys; import jclip.catalog as c; c.cards(); c.state_dict_layout(c.get_card('RN101').architecture);"
            "c.template_set_names(); print(sorted(m for m in ('numpy', 'jittor', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_package_files_hold_the_published_facts():
    rn50 = catalog.get_card("RN50")
    assert rn50.sha256 in rn50.url and rn50.architecture.vision.layers == (3, 4, 6, 3)
    assert catalog.get_card("convnextv2_huge").url.endswith("/im1k/convnextv2_huge_1k_224_ema.pt")
    assert catalog.get_card("convnextv2_base").weights_filename() == "convnextv2_base_1k_224_ema.safetensors"
    assert catalog.get_card("ViT-B-32/laion2b_s34b_b79k").url == (
        "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_model.safetensors")
    assert catalog.template_set_names() == ("single", "imagenet7", "imagenet80")


def _tiny_file(**card):
    return {"architectures": {"convnextv2_mine": {"family": "convnextv2", "depths": [1, 1, 2, 1],
                                                  "dims": [8, 16, 32, 40]}},
            "models": {"mine": dict({"arch": "convnextv2_mine", "url": "https://example.org/mine.pt",
                                     "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                     "interpolation": "bilinear", "input_size": 64}, **card)}}


def test_add_model_config_from_a_dict(fresh_catalog):
    assert catalog.add_model_config(_tiny_file()) == ["convnextv2_mine", "mine"]
    card = catalog.get_card("mine")
    assert (card.family, card.weights_stem, card.architecture.dims) == ("convnextv2", "mine", (8, 16, 32, 40))
    assert catalog.available()[-1] == "mine"


@pytest.mark.parametrize("card, where", [
    ({"arch": "convnextv2_nope"}, "models.mine.arch: unknown architecture"),
    ({"crop": 0.9}, "models.mine.crop: unknown key"),
    ({"mean": [0.5, 0.5]}, "models.mine.mean: must be three"),
    ({"sha256": "ABC"}, "models.mine.sha256: must be 64"),
    ({"family": "clip"}, "models.mine.family: comes from the card's arch"),
])
def test_add_model_config_errors_name_the_key_and_add_nothing(fresh_catalog, tmp_path, card, where):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(_tiny_file(**card)))
    before = catalog.available()
    with pytest.raises(catalog.CatalogError) as e:
        catalog.add_model_config(path)
    assert str(e.value).startswith(f"{path}: {where}"), str(e.value)
    assert catalog.available() == before and "convnextv2_mine" not in catalog.architectures()


def test_add_model_config_from_open_clip_model_configs(fresh_catalog, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    cfg = open_clip.get_model_config("ViT-B-16")
    cfg["vision_cfg"]["image_size"] = 160
    (tmp_path / "ViT-B-16-160.json").write_text(json.dumps(cfg))
    (tmp_path / "coca_mine.json").write_text(json.dumps(open_clip.get_model_config("coca_ViT-B-32")))
    with pytest.raises(catalog.UnsupportedArchitecture, match=r"coca_mine\.json: architecture coca_mine"):
        catalog.add_model_config(tmp_path)          # a folder: every file, or none
    assert "ViT-B-16-160" not in catalog.architectures()
    os.remove(tmp_path / "coca_mine.json")
    assert catalog.add_model_config(tmp_path) == ["ViT-B-16-160"]
    arch = catalog.get_architecture("ViT-B-16-160")
    assert catalog.state_dict_layout(arch)["visual.positional_embedding"] == (101, 768)
    catalog.add_model_config({"models": {"mine-160": {"arch": "ViT-B-16-160", "url": "https://example.org/m.pt",
                                                      "mean": [0, 0, 0], "std": [1, 1, 1],
                                                      "interpolation": "bicubic"}}})
    assert catalog.get_card("mine-160").input_size == 160


def test_jclip_add_model_config_is_the_catalogs(fresh_catalog):
    import jclip
    jclip.add_model_config(_tiny_file())
    assert "mine" in catalog.cards()
