"""jclip.pipeline.config: one reader, every default in default.json, the whole file
validated on load and the class lists by the commands' check (one line, exit 2,
well under a second, no model touched)."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest

from jclip.pipeline.config import (DEFAULT_CONFIG, TEMPLATE_SETS, Config, ConfigError, FrozenDict,
                                   check_class_lists, load_config, load_or_exit)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_dict():
    with open(DEFAULT_CONFIG) as f:
        return json.load(f)


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------

def test_default_loads_with_typed_sections():
    cfg = load_config()
    assert isinstance(cfg, Config) and cfg.path == DEFAULT_CONFIG
    assert cfg.lpp.epochs == 300 and type(cfg.lpp.epochs) is int
    assert cfg.inmap.tau_t == 0.01 and cfg.data.root == "Dataset"
    assert cfg.backbones["vit"].model == "ViT-B/32" and cfg.backbones["rn"].weights == "weights/RN101.safetensors"
    assert cfg.cascade.inmap_mix == {"vit": 0.5, "rn": 0.5} and cfg.cascade.dog_range == (244, 373)
    assert cfg.sweep.lpp_epochs == (100, 300, 500) and cfg.budget.limit_on == "loaded"
    assert cfg.data.file("classes") == os.path.join("Dataset", "classes.txt")
    assert TEMPLATE_SETS == tuple(__import__("jclip.heads.templates", fromlist=["x"]).TEMPLATE_SETS)
    assert TEMPLATE_SETS == ("single", "imagenet7", "imagenet80")     # the catalogue's, in its order


def test_to_dict_gives_back_the_file_byte_for_byte(tmp_path):
    # a tuned file: keys in another order, _tuned kept, no sweep section, ints where floats go
    d = default_dict()
    del d["sweep"]
    d = {"_tuned": {"by": "sweep", "top1": 0.5}, **{k: d[k] for k in reversed(list(d))}}
    d["cascade"]["lpp_mix"] = {"rn": 1, "vit": 0}
    d["inmap"]["tau_t"] = 1
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(d, indent=1))
    cfg = load_config(str(path))
    assert json.dumps(cfg.to_dict(), indent=1) == json.dumps(d, indent=1)
    assert cfg.cascade.lpp_mix["rn"] == 1 and type(cfg.cascade.lpp_mix["rn"]) is int
    assert cfg.sweep.mix_weights == tuple(default_dict()["sweep"]["mix_weights"])   # from default.json
    assert "sweep" not in cfg.to_dict()
    base = load_config()
    assert json.dumps(base.to_dict(), indent=1) == json.dumps(default_dict(), indent=1)


def test_overrides_with_values_and_replace():
    cfg = load_config(None, ["lpp.epochs=7", 'cascade.lpp_mix={"vit": 1.0}', "device=cpu",
                             "cache_dir=null", "backbones.vit.weights=w.pkl"])
    assert cfg.lpp.epochs == 7 and cfg.cascade.lpp_mix == {"vit": 1.0} and cfg.device == "cpu"
    assert cfg.cache_dir is None and cfg.backbones["vit"].weights == "w.pkl"
    tuned = cfg.with_values({"lpp.epochs": 100, "inmap.tau_t": 0.02, "cascade.inmap_mix": {"vit": 0.3, "rn": 0.7},
                             "_tuned": {"by": "test"}})
    assert (tuned.lpp.epochs, tuned.inmap.tau_t, tuned.cascade.inmap_mix["rn"]) == (100, 0.02, 0.7)
    assert cfg.lpp.epochs == 7                                       # the original is unchanged
    assert list(tuned.to_dict()) == list(cfg.to_dict()) + ["_tuned"]
    again = cfg.replace(lpp=dataclasses.replace(cfg.lpp, epochs=50), templates="single")
    assert again.lpp.epochs == 50 and again.templates == "single"
    assert list(again.to_dict()["lpp"]) == list(cfg.to_dict()["lpp"])
    with pytest.raises(ConfigError, match="did you mean `epochs`"):
        cfg.with_values({"lpp.epoch": 3})
    with pytest.raises(ConfigError, match="below the minimum 1"):
        cfg.with_values({"lpp.epochs": 0})


def test_values_are_read_only():
    cfg = load_config()
    assert isinstance(cfg.cascade.inmap_mix, FrozenDict)
    with pytest.raises(TypeError):
        cfg.cascade.inmap_mix["vit"] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lpp.epochs = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.templates = "single"
    assert json.loads(json.dumps(cfg.cascade.inmap_mix)) == {"vit": 0.5, "rn": 0.5}


# --------------------------------------------------------------------------
# The table of bad configurations
# --------------------------------------------------------------------------

def _set(d, key, value):
    *parents, last = key.split(".")
    for p in parents:
        d = d[p]
    d[last] = value


def _del(d, key):
    *parents, last = key.split(".")
    for p in parents:
        d = d[p]
    del d[last]


def _rename(d, key, new):
    *parents, last = key.split(".")
    for p in parents:
        d = d[p]
    d[new] = d.pop(last)


# (name, edit of the default dict or raw file text, --set overrides, expected "<key>: <message>")
BAD = [
    ("misspelt key", lambda d: _rename(d, "inmap.tau_t", "tau_T"), [], "inmap.tau_T: unknown key; did you mean `tau_t`?"),
    ("misspelt top key", lambda d: _rename(d, "batch_size", "batchsize"), [], "batchsize: unknown key; did you mean `batch_size`?"),
    ("misspelt section", lambda d: _rename(d, "dog_head", "doghead"), [], "doghead: unknown key; did you mean `dog_head`?"),
    ("string for int", lambda d: _set(d, "lpp.epochs", "300"), [], 'lpp.epochs: expected a whole number, got the string "300"'),
    ("float for int", lambda d: _set(d, "lpp.epochs", 300.5), [], "lpp.epochs: expected a whole number, got 300.5"),
    ("bool for int", lambda d: _set(d, "batch_size", True), [], "batch_size: expected a whole number, got true"),
    ("number for bool", lambda d: _set(d, "domain_suffix", 1), [], "domain_suffix: expected true or false, got 1"),
    ("missing key", lambda d: _del(d, "inmap.lr"), [], "inmap.lr: missing (a required setting) (default.json has 10.0)"),
    ("missing section", lambda d: _del(d, "dog_head"), [], "dog_head: missing (a required setting)"),
    ("section not an object", lambda d: _set(d, "lpp", 3), [], "lpp: expected an object {...}, got 3"),
    ("NaN mixing weight", lambda d: _set(d, "cascade.lpp_mix.vit", float("nan")), [], "cascade.lpp_mix.vit: expected a finite number, got NaN"),
    ("infinite mixing weight", lambda d: _set(d, "cascade.inmap_mix.rn", float("inf")), [], "cascade.inmap_mix.rn: expected a finite number, got Infinity"),
    ("negative mixing weight", lambda d: _set(d, "cascade.lpp_mix.rn", -0.4), [], "cascade.lpp_mix.rn: mixing weight -0.4 is negative"),
    ("all-zero mixing weights", lambda d: _set(d, "cascade.inmap_mix", {"vit": 0, "rn": 0.0}), [], "cascade.inmap_mix: all mixing weights are zero"),
    ("empty mixing weights", lambda d: _set(d, "cascade.lpp_mix", {}), [], "cascade.lpp_mix: is empty"),
    ("mix names unknown backbone", lambda d: _set(d, "cascade.inmap_mix", {"vit": 0.5, "b16": 0.5}), [], "cascade.inmap_mix: unknown backbones ['b16']; `backbones` has vit, rn"),
    ("dog_range reversed", lambda d: _set(d, "cascade.dog_range", [373, 244]), [], "cascade.dog_range: [373, 244] is reversed"),
    ("dog_range one id", lambda d: _set(d, "cascade.dog_range", [244]), [], "cascade.dog_range: expected a list of 2 items, got 1"),
    ("dog_range negative", lambda d: _set(d, "cascade.dog_range", [-1, 5]), [], "cascade.dog_range[0]: -1 is below the minimum 0"),
    ("dog_range into unseen", lambda d: _set(d, "cascade.dog_range", [244, 380]), [], "cascade.dog_range: [244, 380] reaches the unseen classes (cascade.unseen_from is 374)"),
    ("dog_range narrower than topk", lambda d: _set(d, "cascade.dog_range", [244, 246]), [], "cascade.dog_range: [244, 246] holds 3 classes, fewer than cascade.topk (5)"),
    ("dog_range outside the class list", None, ["cascade.dog_range=[5,12]", "cascade.unseen_from=20"], "cascade.dog_range (--set): [5, 12] is outside the 10 classes of {classes} (ids 0-9)"),
    ("unseen_from vs the class list", None, ["cascade.dog_range=[2,6]", "cascade.unseen_from=8"], "cascade.unseen_from (--set): 8, but {classes} has 10 classes"),
    ("topk below 1", lambda d: _set(d, "cascade.topk", 0), [], "cascade.topk: 0 is below the minimum 1"),
    ("empty sweep list", lambda d: _set(d, "sweep.lpp_epochs", []), [], "sweep.lpp_epochs: the list is empty"),
    ("sweep not a list", lambda d: _set(d, "sweep.inmap_iters", 500), [], "sweep.inmap_iters: expected a list, got 500"),
    ("sweep item of wrong type", lambda d: _set(d, "sweep.inmap_tau_t", [0.01, "0.02"]), [], 'sweep.inmap_tau_t[1]: expected a number, got the string "0.02"'),
    ("sweep mix weight above 1", lambda d: _set(d, "sweep.mix_weights", [0.5, 1.5]), [], "sweep.mix_weights[1]: 1.5 is above the maximum 1"),
    ("unknown sweep key", lambda d: _set(d, "sweep.lpp_epoch", [1]), [], "sweep.lpp_epoch: unknown key; did you mean `lpp_epochs`?"),
    ("unknown template set", lambda d: _set(d, "templates", "imagenet8"), [], 'templates: "imagenet8" is not one of: "single", "imagenet7", "imagenet80"'),
    ("unknown device", lambda d: _set(d, "device", "gpu"), [], 'device: "gpu" is not one of: "cpu", "cuda"'),
    ("unknown dog head mode", lambda d: _set(d, "dog_head.mode", "slow"), [], 'dog_head.mode: "slow" is not one of: "fast", "full"'),
    ("no backbone", lambda d: _set(d, "backbones", {}), [], "backbones: is empty"),
    ("backbone without weights", lambda d: _del(d, "backbones.rn.weights"), [], "backbones.rn.weights: missing"),
    ("budget limit_on", lambda d: _set(d, "budget.limit_on", "used"), [], 'budget.limit_on: "used" is not one of'),
    ("tau zero", lambda d: _set(d, "inmap.tau_i", 0), [], "inmap.tau_i: 0 must be greater than 0"),
    ("set a bad value", None, ["inmap.alpha=1.5"], "inmap.alpha (--set): 1.5 is above the maximum 1"),
    ("negative gamma", lambda d: _set(d, "inmap.gamma", -1), [], "inmap.gamma: -1 is below the minimum 0"),
    ("set misspelt key", None, ["inmap.tau_T=0.02"], "inmap.tau_T (--set): no such setting; did you mean `tau_t`?"),
    ("set without =", None, ["lpp.epochs"], "--set 'lpp.epochs': expected key=value"),
    ("set below a value", None, ["lpp.epochs.x=1"], "lpp.epochs.x (--set): lpp.epochs is not a section"),
    ("duplicate key", '{"lpp": {"epochs": 3, "epochs": 4}}', [], "epochs: given twice in one object"),
    ("not JSON", '{"lpp": {"epochs": 3,}}', [], "not valid JSON (line 1 column 22"),
    ("not an object", "[1, 2]", [], "expected a JSON object {...}, got a list"),
    ("bad class list", None, ["data.classes=bad_classes.txt"], "data.classes (--set): {root}/bad_classes.txt"),
]


@pytest.fixture(scope="module")
def bad_configs(tmp_path_factory):
    """Every BAD case as a file, checked in one fresh interpreter that records each
    file it opens: (results by name, files opened, modules loaded)."""
    tmp = tmp_path_factory.mktemp("configs")
    root = tmp / "Dataset"
    root.mkdir()
    (root / "classes.txt").write_text("\n".join(f"Animal_c{i} {i}" for i in range(10)))
    (root / "bad_classes.txt").write_text("Animal_a 0\nAnimal_b 0\n")
    weights = tmp / "weights"
    weights.mkdir()
    cases = []
    for i, (name, edit, sets, _) in enumerate(BAD):
        d = default_dict()
        d["data"]["root"] = str(root)
        d["backbones"] = {"vit": {"model": "ViT-B/32", "weights": str(weights / "vit.pkl")},
                          "rn": {"model": "RN101", "weights": str(weights / "rn.pkl")}}
        d["dog_head"]["weights"] = str(weights / "cnx.pkl")
        path = tmp / f"case{i}.json"
        if isinstance(edit, str):
            path.write_text(edit)
        else:
            if edit:
                edit(d)
            path.write_text(json.dumps(d, indent=1))
        cases.append((name, str(path), sets))
    for f in ("vit.pkl", "rn.pkl", "cnx.pkl"):
        (weights / f).write_bytes(b"not weights: must never be opened")
    script = textwrap.dedent("""
        import json, sys, time, io, contextlib
        opened = []
        sys.addaudithook(lambda ev, args: opened.append(str(args[0])) if ev == "open" else None)
        from jclip.pipeline.config import ConfigError, load_config, load_for_command
        out = {}
        for name, path, sets in json.loads(sys.argv[1]):
            try:                    # the load alone: only the checks that need no other file
                load_config(path, sets)
                loads = True
            except ConfigError:
                loads = False
            err = io.StringIO()
            t = time.perf_counter()
            try:                    # what every command runs before any work
                with contextlib.redirect_stderr(err):
                    load_for_command(path, sets)
                code = 0
            except SystemExit as e:
                code = e.code
            out[name] = dict(code=code, stderr=err.getvalue(), seconds=time.perf_counter() - t, loads=loads)
        print(json.dumps(dict(out=out, opened=opened, modules=sorted(sys.modules))))
    """)
    r = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    return dict(got, paths={name: path for name, path, _ in cases}, root=str(root), weights=str(weights))


@pytest.mark.parametrize("name,expected", [(c[0], c[3]) for c in BAD], ids=[c[0] for c in BAD])
def test_bad_configuration_is_one_line_and_exit_2(bad_configs, name, expected):
    r = bad_configs["out"][name]
    path = bad_configs["paths"][name]
    expected = expected.replace("{classes}", os.path.join(bad_configs["root"], "classes.txt"))
    expected = expected.replace("{root}", bad_configs["root"])
    assert r["code"] == 2, r
    lines = r["stderr"].splitlines()
    assert len(lines) == 1, r["stderr"]
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert expected in lines[0], lines[0]
    assert r["seconds"] < 1.0


# the checks that read the class lists: the commands' step, not load_config
NEEDS_CLASS_LISTS = ("dog_range outside the class list", "unseen_from vs the class list", "bad class list")


def test_only_the_class_list_checks_wait_for_the_command_step(bad_configs):
    loads = sorted(name for name, r in bad_configs["out"].items() if r["loads"])
    assert loads == sorted(NEEDS_CLASS_LISTS)


@pytest.mark.parametrize("name", NEEDS_CLASS_LISTS[:2])
def test_train_reports_a_class_list_mismatch_before_loading_a_model(bad_configs, name):
    sets = [s for c in BAD if c[0] == name for s in c[2]]
    args = [a for s in sets for a in ("--set", s)]
    r = subprocess.run([sys.executable, "-m", "jclip.pipeline", "train", "--config",
                        bad_configs["paths"][name], *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr.splitlines() == [bad_configs["out"][name]["stderr"].strip()]


def test_check_class_lists_reads_the_lists(tmp_path):
    (tmp_path / "classes.txt").write_text("\n".join(f"Animal_c{i} {i}" for i in range(10)))
    cfg = load_config(None, [f"data.root={tmp_path}", "cascade.dog_range=[2,6]", "cascade.unseen_from=10"])
    check_class_lists(cfg)
    with pytest.raises(ConfigError, match=r"cascade.unseen_from: 12, but .* has 10 classes"):
        check_class_lists(cfg.with_values({"cascade.unseen_from": 12}))


def test_no_model_touched_on_a_bad_configuration(bad_configs):
    assert not [p for p in bad_configs["opened"] if p.startswith(bad_configs["weights"])]
    assert "jittor" not in bad_configs["modules"] and "torch" not in bad_configs["modules"]


def test_budget_py_exits_2_on_a_bad_configuration(bad_configs):
    path = bad_configs["paths"]["misspelt key"]
    r = subprocess.run([sys.executable, "budget.py", "--config", path], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"error: {path}: inmap.tau_T: unknown key; did you mean `tau_t`?"


def test_load_or_exit_returns_a_good_configuration():
    assert load_or_exit(None, ["lpp.epochs=5"]).lpp.epochs == 5
