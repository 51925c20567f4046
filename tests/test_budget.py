"""budget.py / jclip.pipeline.budget: counts from the configuration, no Jittor; three
totals; the last line's verdict is about the count the limit applies to."""
import ast
import json
import os
import subprocess
import sys

import pytest

from jclip.pipeline import budget
from jclip.pipeline.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADED = 359_588_540          # default configuration: the sums below
BY_USE = 630_553_886


def run_budget(*args):
    return subprocess.run([sys.executable, "budget.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_default_counts_match_the_spec():
    cfg = load_config(None, ["data.root=/nonexistent"])     # counted without weights or data
    rows, stages, notes = budget.components(cfg)
    params = dict(rows)
    # SPEC section 3
    assert params["ViT-B/32 image tower"] == 87_849_216 and params["ViT-B/32 text tower"] == 63_428_097
    assert params["RN101 image tower"] == 56_259_936 and params["RN101 text tower"] == 63_428_097
    assert any("convnextv2_base: 88,717,800" in n for n in notes)
    for name, n in (("RN50", 102_007_137), ("ViT-B/16", 149_620_737)):
        assert budget.count(budget.card_shapes(name)) == n
    loaded, by_use = budget.totals(rows, stages)
    clip = 151_277_313 + 119_688_033
    conv = 88_717_800 - 1_025_000 + 130 * 1025
    heads = 2 * 403 * 512 + 2 * (374 * 512 + 2 * 374)
    assert (loaded, by_use) == (clip + conv + heads, 2 * clip + conv + heads) == (LOADED, BY_USE)
    # each image and prompt is encoded once per backbone: by calls = loaded
    assert budget.by_calls(rows) == loaded


def test_every_convnext_size_is_counted_by_name():
    # every ConvNeXt-V2 size of the catalogue, without weights; Tiny's 28.6M (official README)
    cfg = load_config(None, ["data.root=/nonexistent", "dog_head.model=convnextv2_tiny",
                             "dog_head.weights=/nonexistent/x.safetensors"])
    _, _, notes = budget.components(cfg)
    assert "convnextv2_tiny: 28,635,496 with its ImageNet head, from architecture convnextv2_tiny" in notes


def test_budget_py_output_and_exit_status():
    r = run_budget()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(l.startswith("total, loaded") and l.endswith(f"{LOADED:,}") for l in lines)
    assert any(l.startswith("total, by use") and l.endswith(f"{BY_USE:,}") for l in lines)
    assert any(l.startswith("total, by calls") and l.endswith(f"{LOADED:,}") for l in lines)
    assert "by calls equals loaded" in r.stdout
    # the limit applies to loaded; by use is over 500M and the last line says so
    assert lines[-1].startswith(f"within the limit: loaded {LOADED:,} <= 500,000,000")
    assert "by use is over it" in lines[-1]


@pytest.mark.parametrize("args,code,last", [
    (["--limit-on", "both"], 1, f"OVER the limit: by use {BY_USE:,} > 500,000,000"),
    (["--limit-on", "all"], 1, f"OVER the limit: by use {BY_USE:,} > 500,000,000"),
    (["--limit-on", "by-calls"], 0, f"within the limit: by calls {LOADED:,} <= 500,000,000"),
    (["--limit", LOADED - 1], 1, f"OVER the limit: loaded {LOADED:,} > {LOADED - 1:,}"),
    (["--limit", BY_USE, "--limit-on", "all"], 0, "within the limit: loaded"),
    (["--set", f"budget.limit={LOADED}"], 0, f"within the limit: loaded {LOADED:,} <= {LOADED:,}"),
])
def test_verdict_is_about_the_counts_the_limit_applies_to(args, code, last):
    r = run_budget(*args)
    assert r.returncode == code, r.stderr
    assert r.stdout.splitlines()[-1].startswith(last)
    if code == 0:
        assert "OVER" not in r.stdout


def test_verdict_never_within_while_an_applying_count_is_over():
    counts = {"loaded": 10, "by use": 20, "by calls": 10}
    for limit in (5, 10, 15, 20, 25):
        for on, applies in budget.LIMIT_APPLIES_TO.items():
            over, line = budget.verdict(counts, limit, on)
            assert over == any(counts[a] > limit for a in applies)
            assert line.startswith("OVER the limit" if over else "within the limit")


def test_budget_does_not_import_jittor(tmp_path):
    # a weights path that does not exist: known architectures need no file
    cfg = json.load(open(os.path.join(REPO, "jclip", "pipeline", "default.json")))
    cfg["backbones"]["vit"]["weights"] = str(tmp_path / "missing.pkl")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    code = ("import runpy, sys\n"
            f"sys.argv = ['budget.py', '--config', {str(path)!r}]\n"
            "try:\n    runpy.run_path('budget.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('jittor' in sys.modules, 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "False False"


def test_unknown_model_without_weights_is_a_clear_error(tmp_path):
    r = run_budget("--set", "dog_head.model=convnextv2_mine", "--set", f"dog_head.weights={tmp_path / 'x.pkl'}")
    assert r.returncode == 1 and r.stderr.strip().startswith(f"error: {tmp_path / 'x.pkl'}: weights not found")


def test_model_not_known_by_name_is_counted_from_its_file(tmp_path):
    # a ConvNeXt-V2 of a size the catalogue does not have (official names,
    # ImageNet head): counted from its shapes on disk
    from jclip.catalog import ConvNeXtArch, state_dict_layout
    from jclip.weights.checkpoint import save_state_dict
    import numpy as np
    shapes = state_dict_layout(ConvNeXtArch("mine", (1, 1, 2, 1), (8, 16, 32, 40)))
    path = tmp_path / "convnextv2_mine.safetensors"
    save_state_dict(str(path), {k: np.zeros(s, np.float32) for k, s in shapes.items()}, {})
    cfg = load_config(None, ["data.root=/nonexistent", "dog_head.model=convnextv2_mine",
                             f"dog_head.weights={path}"])
    rows, _, notes = budget.components(cfg)
    params = dict(rows)
    full = budget.count(shapes)
    assert params["convnextv2_mine backbone (without its 41,000-parameter ImageNet head)"] == full - 41_000
    assert params["dog head (130-way, 40->130)"] == 41 * 130
    assert f"convnextv2_mine: {full:,} with its ImageNet head, from {path}" in notes


def test_every_clip_card_is_counted_from_its_layout():
    # the layouts themselves are checked against open_clip in tests/test_catalog.py
    from jclip.catalog import available, get_card, state_dict_layout
    for name in available("clip"):
        assert budget.card_shapes(name) == state_dict_layout(get_card(name).architecture), name
    assert budget.count(budget.card_shapes("ViT-B-32/laion2b_s34b_b79k")) == 151_277_313


def test_parameters_are_what_open_clip_counts():
    # buffers (BatchNorm statistics, counters) are not parameters: open_clip's
    # own count on torch's meta device (no memory), a ResNet and a ViT
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from jclip.catalog import get_card
    for name in ("RN50x4", "ViT-H-14/laion2b_s32b_b79k"):
        with torch.device("meta"):
            ref = open_clip.model.CLIP(**open_clip.get_model_config(get_card(name).architecture.name))
        assert budget.count(budget.card_shapes(name)) == sum(p.numel() for p in ref.parameters()), name


def test_open_clip_backbone_counted_by_name(tmp_path):
    cfg = load_config(None, ["data.root=/nonexistent", "backbones.vit.model=ViT-B-16/datacomp_xl_s13b_b90k",
                             f"backbones.vit.weights={tmp_path / 'missing.safetensors'}"])
    rows, _, notes = budget.components(cfg)
    params = dict(rows)
    assert params["ViT-B-16/datacomp_xl_s13b_b90k image tower"] == 86_192_640
    assert any(n.startswith("ViT-B-16/datacomp_xl_s13b_b90k: 149,620,737 from architecture") for n in notes)
