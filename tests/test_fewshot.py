"""The few-shot benchmark: datasets and their errors, reproducible shots,
CoOp beating zero-shot on a generated dataset, the CLI end to end (its
accuracies recomputed independently), plots."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

import jclip  # noqa: F401
from jclip.fewshot import cli, study
from jclip.fewshot import datasets as fewshot
from jclip.fewshot import params as fewshot_params
from jclip.fewshot.encoder import CachedEncoder
from jclip.weights.checkpoint import save_state_dict
from reference import build_reference

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
           "yellow": (230, 220, 30)}


def make_folder(root, per_class=8, seed=0):
    """root/<colour>/<i>.png: a noisy patch of the class colour on a random
    background, so a class is a colour signal, not an identical image."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (40, 40, 3)).astype(np.float64)
            img[6:34, 6:34] = np.array(rgb) + rng.normal(0, 20, (28, 28, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    _, state = build_reference("tiny-vit", seed=11)
    path = tmp_path_factory.mktemp("model") / "tiny.pkl"
    save_state_dict(path, state, {"model": "tiny-vit"})
    return str(path)


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("colours"))


# ------------------------------------------------------------------ datasets

def test_folder_split_is_per_class_and_seeded(colours):
    a = fewshot.load_dataset(str(colours), test_fraction=0.25)
    b = fewshot.load_dataset(str(colours), test_fraction=0.25)
    assert a.class_names == sorted(COLOURS)
    assert a.test_paths == b.test_paths and not set(a.test_paths) & set(a.train_paths)
    assert np.bincount(a.test_labels).tolist() == [2, 2, 2, 2]
    assert np.bincount(a.train_labels).tolist() == [6, 6, 6, 6]


def test_lists_with_names_or_integer_labels(colours, tmp_path):
    ds = fewshot.load_dataset(str(colours))
    train = tmp_path / "train.txt"
    train.write_text("".join(f"{os.path.relpath(p, tmp_path)} {os.path.basename(os.path.dirname(p))}\n"
                             for p in ds.train_paths))
    test = tmp_path / "test.txt"
    test.write_text("# comment\n" + "".join(f"{p} {ds.class_names.index(os.path.basename(os.path.dirname(p)))}\n"
                                            for p in ds.test_paths))
    names = tmp_path / "names.txt"
    names.write_text("\n".join(ds.class_names) + "\n")
    from_lists = fewshot.load_dataset(train=str(train), test=str(test), class_names=str(names))
    assert from_lists.class_names == ds.class_names
    assert [os.path.abspath(p) for p in from_lists.train_paths] == [os.path.abspath(p) for p in ds.train_paths]
    np.testing.assert_array_equal(from_lists.test_labels, ds.test_labels)
    # train and test folders
    folders = fewshot.load_dataset(train=str(colours), test=str(colours))
    assert len(folders.train_paths) == len(folders.test_paths) == 32


@pytest.mark.parametrize("setup,message", [
    (lambda d: dict(data=str(d / "missing")), "no such folder"),
    (lambda d: dict(data=str(d / "flat")), "no class sub-folders"),
    (lambda d: dict(data=str(d / "emptyclass")), "without images"),
    (lambda d: dict(train=str(d / "bad.txt"), test=str(d / "bad.txt")), "expected 'path label'"),
    (lambda d: dict(train=str(d / "gone.txt"), test=str(d / "gone.txt")), "not found"),
    (lambda d: dict(data=str(d / "single")), "at least 2"),
    (lambda d: dict(train=str(d / "single")), "both --train and --test"),
])
def test_bad_datasets_say_what_is_wrong(tmp_path, setup, message):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    (tmp_path / "emptyclass" / "cat").mkdir(parents=True)
    (tmp_path / "single" / "cat").mkdir(parents=True)
    (tmp_path / "single" / "cat" / "a.jpg").write_bytes(b"x")
    (tmp_path / "bad.txt").write_text("onlyonefield\n")
    (tmp_path / "gone.txt").write_text("nothere.jpg cat\n")
    with pytest.raises(fewshot.DatasetError, match=message):
        fewshot.load_dataset(**setup(tmp_path))


def test_shots_are_reproducible_nested_and_disjoint_from_validation():
    labels = np.repeat(np.arange(5), 20)
    one, _ = fewshot.sample_shots(labels, 1, seed=3)
    five, val = fewshot.sample_shots(labels, 5, seed=3)
    again, _ = fewshot.sample_shots(labels, 5, seed=3)
    other, _ = fewshot.sample_shots(labels, 5, seed=4)
    np.testing.assert_array_equal(five, again)
    assert not np.array_equal(five, other)
    assert set(one) <= set(five) and not set(five) & set(val)
    assert np.bincount(labels[five]).tolist() == [5] * 5
    assert np.bincount(labels[val]).tolist() == [4] * 5


def test_methods_are_built_from_the_registry():
    t = np.eye(4)
    probe = study.make_head("linear_probe", 3, t, num_classes=4, has_val=False)
    assert probe.get_params()["Cs"] == (1.0,) and probe.num_classes == 4
    lpp = study.make_head("lpp", 7, t, params={"epochs": 5, "momentum": None})
    assert lpp.text_weights is t and lpp.seed == 7 and lpp.epochs == 5 and lpp.momentum == 0.9
    with pytest.raises(ValueError, match="no hyper-parameter"):
        study.make_head("lpp", 0, t, params={"epohcs": 5})
    with pytest.raises(ValueError, match="unknown method"):
        study.make_head("inmap_typo", 0, t)
    assert "inmap" not in study.METHODS            # transductive, not a few-shot method


def test_scores_are_percent_top1_and_top5():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((300, 10)), rng.integers(0, 10, 300)
    rank = np.argsort(np.argsort(-logits, axis=1, kind="stable"), axis=1)[np.arange(300), labels]
    got = study.scores(logits, labels)
    assert got == {"top1": 100 * np.mean(rank == 0), "top5": 100 * np.mean(rank < 5)}
    assert 0 < got["top1"] < got["top5"] < 100


# ------------------------------------------------------------------ learning

@pytest.mark.slow
def test_coop_beats_zero_shot_on_generated_colours(colours, tiny_model, tmp_path):
    ds = fewshot.load_dataset(str(colours))
    backbone = CachedEncoder(tiny_model, str(tmp_path / "cache"), progress=False)
    train_x, test_x = backbone.images(ds.train_paths), backbone.images(ds.test_paths)
    text = backbone.text_weights(ds.class_names, "single")
    zero = study.scores(study.make_head("zeroshot", 0, text).fit().logits(test_x),
                        ds.test_labels)["top1"]
    learner = study.make_head("coop", 0, model=backbone.model, class_names=ds.class_names,
                              params=dict(epochs=25, batch_size=8, lr=0.05))
    learner.fit(train_x, ds.train_labels)
    losses = [h[1] for h in learner.history_]
    coop = study.scores(learner.logits(test_x), ds.test_labels)["top1"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert coop > zero + 20, (coop, zero)


# ------------------------------------------------------------------ CLI

def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def is_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    return True


def zero_shot_top1(colours, tiny_model, cache, classes=None):
    """Zero-shot top-1 (%) on the colours test split, computed here from the
    cached features: argmax of features . text weights, no study code."""
    ds = fewshot.load_dataset(str(colours))
    backbone = CachedEncoder(tiny_model, cache, progress=False)
    classes = np.arange(len(ds.class_names)) if classes is None else classes
    keep = np.isin(ds.test_labels, classes)
    x = backbone.images([p for p, k in zip(ds.test_paths, keep) if k])
    t = backbone.text_weights([ds.class_names[i] for i in classes], "single")
    return 100.0 * np.mean(classes[np.argmax(x @ t.T, axis=1)] == ds.test_labels[keep])


@pytest.mark.slow
def test_cli_end_to_end(colours, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--data", str(colours), "--model", tiny_model, "--shots", "1", "2", "--seeds", "1", "2",
            "--methods", *study.METHODS, "--coop-epochs", "2", "--cocoop-epochs", "1",
            "--cocoop-batch-size", "4", "--finetune-epochs", "2", "--templates", "single", "--output", str(out),
            "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Tip-Adapter-F" in printed and "±" in printed
    rows = read_rows(out / "results.csv")
    assert len(rows) == len(study.METHODS) * 2 * 2
    assert {(r["method"], r["shots"], r["seed"]) for r in rows} == \
        {(m, s, d) for m in study.METHODS for s in ("1", "2") for d in ("1", "2")}
    for r in rows:
        assert 0 <= float(r["top1"]) <= float(r["top5"]) <= 100
    zs = next(r for r in rows if r["method"] == "zeroshot")
    assert float(zs["top1"]) == pytest.approx(zero_shot_top1(colours, tiny_model, str(tmp_path / "cache")),
                                              abs=1e-4)
    run = json.loads((out / "run.json").read_text())
    # flags given, and class defaults for those left unset
    assert run["hyper_parameters"]["coop"]["epochs"] == 2
    assert run["hyper_parameters"]["coop"]["batch_size"] == 32
    assert run["hyper_parameters"]["cocoop"]["batch_size"] == 4
    assert is_png(out / "accuracy.png") and (out / "accuracy.svg").is_file()
    saved = sorted(os.listdir(out / "prompts"))
    assert saved == sorted([f"{m}-{s}shot-seed{d}.npz" for m in ("coop", "cocoop")
                            for s in (1, 2) for d in (1, 2)] +
                           [f"clip_finetune-{s}shot-seed{d}.safetensors" for s in (1, 2) for d in (1, 2)])
    # zero-shot does not depend on the shots
    zs = {float(r["top1"]) for r in rows if r["method"] == "zeroshot"}
    assert len(zs) == 1


def test_cli_base_to_new(colours, tiny_model, tmp_path, capsys):
    out = tmp_path / "b2n"
    argv = ["--data", str(colours), "--model", tiny_model, "--shots", "2", "--seeds", "1",
            "--methods", "zeroshot", "tip_adapter", "coop", "cocoop", "--coop-epochs", "2",
            "--cocoop-epochs", "1", "--cocoop-batch-size", "4", "--base-to-new",
            "--output", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert cli.main(argv) == 0
    rows = {r["method"]: r for r in read_rows(out / "results.csv")}
    assert set(rows) == {"zeroshot", "tip_adapter", "coop", "cocoop"}
    for m in ("zeroshot", "coop", "cocoop"):
        b, n = float(rows[m]["base_top1"]), float(rows[m]["new_top1"])
        assert float(rows[m]["H"]) == pytest.approx(2 * b * n / (b + n) if b + n else 0, abs=1e-3)
        assert b <= float(rows[m]["base_top5"]) and n <= float(rows[m]["new_top5"])
    # base: classes 0-1 among themselves; new: classes 2-3 among themselves
    cache = str(tmp_path / "cache")
    assert float(rows["zeroshot"]["base_top1"]) == pytest.approx(
        zero_shot_top1(colours, tiny_model, cache, np.array([0, 1])), abs=1e-4)
    assert float(rows["zeroshot"]["new_top1"]) == pytest.approx(
        zero_shot_top1(colours, tiny_model, cache, np.array([2, 3])), abs=1e-4)
    assert rows["tip_adapter"]["new_top1"] == "nan"
    assert is_png(out / "accuracy.png")


# (options, the one error line's start): each refused before the dataset or model is looked at
BAD_PARAMS = [
    (["--set", "lpp.epoch=3"], "error: --set lpp.epoch=3: LPPlusPlus has no hyper-parameter 'epoch'; did you mean `epochs`?"),
    (["--set", "tip_adaptr.beta_scale=3"], "error: --set tip_adaptr.beta_scale=3: unknown method 'tip_adaptr'; did you mean `tip_adapter`?"),
    (["--set", "lpp.alpha_every=0"], "error: --set lpp.alpha_every=0: LP++: alpha_every must be >= 1, got 0"),
    (["--set", "tip_adapter.beta_steps=ten"], "error: --set tip_adapter.beta_steps=ten: Tip-Adapter: beta_steps must be an integer"),
    (["--set", "tip_adapter_f.betas=[0.9]"], "error: --set tip_adapter_f.betas=[0.9]: Tip-Adapter-F: betas must be two numbers"),
    (["--set", "linear_probe.gtol=-1"], "error: --set linear_probe.gtol=-1: Linear probe: gtol must be"),
    (["--set", "coop.position=top"], "error: --set coop.position=top: CoOp: class token position must be one of"),
    (["--set", "lpp.seed=3"], "error: --set lpp.seed=3: seed is set by the study"),
    (["--set", "lpp.epochs"], "error: --set lpp.epochs: expected METHOD.PARAM=VALUE"),
    (["--coop-epochs", "-1"], "error: --coop-epochs -1: CoOp: epochs must be >= 0, got -1"),
    (["--finetune-trainable", "some"], "error: --finetune-trainable some: CLIP fine-tune: trainable must be"),
]


@pytest.mark.parametrize("options,expected", BAD_PARAMS, ids=[" ".join(o) for o, _ in BAD_PARAMS])
def test_cli_refuses_a_bad_hyper_parameter_in_one_line(tmp_path, capsys, options, expected):
    # neither the folder nor the model exists: the options are refused first
    assert cli.main(["--data", str(tmp_path / "nope"), "--model", str(tmp_path / "x.pkl"), *options]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(expected), err


def test_set_and_flags_reach_every_heads_constructor():
    args = cli.parse_args(["--data", "d", "--model", "m", "--set", "lpp.epochs=7", "--set", "lpp.momentum=0.5",
                           "--set", "tip_adapter.beta_scale=5", "--set", "linear_probe.Cs=[2.0, 4.0]",
                           "--set", "tip_adapter_f.betas=[0.8, 0.9]", "--set", "coop.ctx_init=a photo",
                           "--coop-epochs", "3", "--lr", "0.01", "--finetune-image-only", "--no-progress"])
    p = fewshot_params.method_params(args)
    assert p["lpp"] == {"epochs": 7, "momentum": 0.5} and p["tip_adapter"] == {"beta_scale": 5}
    assert p["coop"] == {"ctx_init": "a photo", "epochs": 3, "lr": 0.01} and p["cocoop"] == {"lr": 0.01}
    assert p["clip_finetune"] == {"train_text": False}
    text = np.eye(3, 4)
    lpp = study.make_head("lpp", 1, text, 3, params=p["lpp"])
    assert (lpp.epochs, lpp.momentum, lpp.seed) == (7, 0.5, 1)
    tip = study.make_head("tip_adapter_f", 1, text, 3, params=p["tip_adapter_f"])
    assert tip.betas == [0.8, 0.9] and tip.check_params()["betas"] == (0.8, 0.9)
    lp = study.make_head("linear_probe", 1, None, 3, params=p["linear_probe"])
    assert lp.Cs == [2.0, 4.0]
    ran = fewshot_params.resolved(p, ["lpp", "coop"])
    assert ran["lpp"]["epochs"] == 7 and ran["lpp"]["alpha_scale"] == 250.0      # given, and the default
    assert ran["coop"]["epochs"] == 3 and ran["coop"]["batch_size"] == 32 and "model" not in ran["coop"]


def test_cli_reports_a_bad_folder_or_model(tmp_path, capsys):
    code = cli.main(["--data", str(tmp_path / "nope"), "--model", "x.pkl"])
    assert code == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "data" / "cat").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / "data" / "cat" / f"{i}.png")
    assert cli.main(["--data", str(tmp_path / "data"), "--model", str(tmp_path / "x.pkl")]) == 2
    assert "not a model name" in capsys.readouterr().err
