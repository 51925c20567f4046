"""Every command fails in one line: the bad-option table is generated from the
parsers in ``jclip.commands.COMMANDS`` (a new option is covered without being
listed here), and each failure class of issue 22 has its own case: seeds out
of numpy's range refused before any file is written, CUDA asked for where
there is none, an unknown ``--features`` key, class names that differ only in
case or separators, and the few-shot CLI on a symlink loop, a corrupt image,
``--batch-size 0``, ``--eval-episodes 0`` and ``--base-to-new`` with one class.

Most commands run in this process (``Command.main``: parsing fails before any
model is imported); a few run as users start them (``python convert.py``,
``bash train.sh``, ``python -m ...``) to prove the real entry points.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jclip import commands, distributed
from jclip.commands import COMMANDS, UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_JSON = os.path.join(REPO, "jclip", "pipeline", "default.json")


def one_error_line(err: str) -> str:
    """The single stderr line, which must be an ``error:`` line without a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def run_in_process(capsys, name, argv):
    """(status, the one error line) of COMMANDS[name] run here."""
    capsys.readouterr()
    status = COMMANDS[name].main(argv)
    return status, capsys.readouterr().err


# --------------------------------------------------------------------------
# The bad-option table, from the parsers
# --------------------------------------------------------------------------

def _actions(parser):
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def _flag(action):
    """How argparse names the action in its errors."""
    return "/".join(action.option_strings) if action.option_strings else (action.metavar or action.dest)


def _check_of(action):
    """The path check of an action's type (itself, or deferred by checked_later)."""
    return getattr(action.type, "check", action.type)


def _valid_value(action, tmp):
    """A value the action accepts (for the required ones the table does not test)."""
    check = _check_of(action)
    if check is commands.existing_dir or getattr(check, "__name__", "") == "dataset_root":
        return str(tmp)             # a folder holding TrainSet/ too
    if check in (commands.existing_file, commands.existing_path):
        return str(tmp / "file.txt")
    if action.choices:
        return str(list(action.choices)[0])
    if action.type in (commands.positive_int, commands.non_negative_int, commands.seed, int):
        return "1"
    return "x"


def _required(parser, tmp, leave_out=None):
    argv = []
    for a in _actions(parser):
        if a.required and a is not leave_out:
            value = _valid_value(a, tmp)
            argv += [a.option_strings[0], value] if a.option_strings else [value]
    return argv


def bad_values(action, tmp):
    """[(value, why)] an action must refuse, from its type, choices and kind."""
    out = []
    t, check = action.type, _check_of(action)
    numeric = {int, float, commands.positive_int, commands.non_negative_int, commands.seed}
    if t in numeric or getattr(t, "__name__", "") in ("number", "all_or_positive"):
        out.append(("abc", "not a number"))
    if t is commands.positive_int:
        out += [("0", "a count of 0"), ("-1", "a negative count")]
    if t is commands.non_negative_int:
        out.append(("-1", "a negative count"))
    if t is commands.seed:
        out += [("-1", "a negative seed"), ("1" * 20, "a 20-digit seed")]
    for bound, op in getattr(t, "bounds", ()):
        out.append((str(bound - 1 if op in (">=",) else bound + 1 if op == "<=" else bound), f"not {op} {bound}"))
    if getattr(t, "__name__", "") == "number":
        out.append(("nan", "NaN"))
    if getattr(t, "__name__", "") == "all_or_positive":
        out += [("0", "0 for all-or-positive")]
    if check in (commands.existing_file, commands.existing_dir, commands.existing_path):
        out.append((str(tmp / "missing"), "a missing path"))
    if t is commands.device:
        out.append(("tpu", "an unknown device"))
    if action.choices and t is not commands.device:
        out.append(("no-such-choice", "an unknown choice"))
    return out


def table(tmp):
    """Every (command, argv, what) the commands must refuse with status 2."""
    rows = []
    for name, command in COMMANDS.items():
        parser = command()
        rows.append((name, _required(parser, tmp) + ["--no-such-option"], "--no-such-option", "an unknown option"))
        for a in _actions(parser):
            flag = _flag(a)
            if a.required:
                rows.append((name, _required(parser, tmp, leave_out=a), flag, "a missing required argument"))
            if not a.option_strings:
                rows += [(name, _required(parser, tmp, leave_out=a) + [v], flag, why) for v, why in bad_values(a, tmp)]
                continue
            opt = a.option_strings[0]
            if a.nargs == 0:         # a flag: no value allowed
                rows.append((name, _required(parser, tmp) + [f"{opt}=1"], flag, "a value for a flag"))
                continue
            rows.append((name, _required(parser, tmp) + [opt], flag, "an option without its value"))
            rows += [(name, _required(parser, tmp) + [opt, v], flag, why) for v, why in bad_values(a, tmp)]
    return rows


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("place")
    (tmp / "file.txt").write_text("x\n")
    (tmp / "TrainSet").mkdir()
    return tmp


def test_the_registry_names_every_command_and_its_parser(place):
    assert {"convert", "process", "budget", "pipeline train", "pipeline test", "val report", "val sweep",
            "extract", "fewshot", "finetune train", "finetune predict"} <= set(COMMANDS)
    for name, command in COMMANDS.items():
        parser = command()
        assert isinstance(parser, commands.CommandParser), name
        entry = command.entry.split()          # what a user types reaches this module
        if entry[0] == "bash":
            assert f"-m {command.module.rsplit('.', 1)[0]}" in open(os.path.join(REPO, entry[1])).read(), name
        elif entry[1] == "-m":
            assert command.module.startswith(entry[2]), name
        else:
            assert f"from {command.module} import main" in open(os.path.join(REPO, entry[1])).read(), name
        assert parser.prog.startswith(command.module_parser().prog), name
    # the generator finds the checks that matter, so a missing one would show
    rows = table(place)
    whys = {(n, f, w) for n, _, f, w in rows}
    for expected in [("extract", "--batch-size", "a count of 0"), ("extract", "--shard-size", "a count of 0"),
                     ("extract", "--workers", "a count of 0"), ("fewshot", "--eval-episodes", "a count of 0"),
                     ("fewshot", "--batch-size", "a count of 0"), ("fewshot", "--seeds", "a 20-digit seed"),
                     ("process", "--seed", "a negative seed"), ("convert", "PATH", "a missing path"),
                     ("pipeline test", "--images", "a missing path"), ("fewshot", "--data", "a missing path"),
                     ("extract", "--device", "an unknown device"), ("finetune train", "--mode", "an unknown choice"),
                     ("extract", "--model", "a missing required argument")]:
        assert expected in whys, expected
    assert len(rows) > 250


def _table_ids():
    import tempfile
    return [f"{n}: {w} ({f})" for n, _, f, w in table(__import__("pathlib").Path(tempfile.gettempdir()) / "t")]


@pytest.mark.parametrize("index", range(len(_table_ids())), ids=_table_ids())
def test_every_bad_option_is_one_line_and_status_2(place, capsys, index):
    name, argv, flag, why = table(place)[index]
    status, err = run_in_process(capsys, name, argv)
    line = one_error_line(err)
    assert status == 2, (argv, err)
    assert line.startswith(f"error: {COMMANDS[name]().prog}: ") or line.startswith("error: python -m"), line
    if why != "a missing required argument":
        assert flag in line or flag.split("/")[0] in line, (flag, line)


@pytest.mark.parametrize("argv,status", [
    ([sys.executable, "convert.py", "--timeout", "0"], 2),
    ([sys.executable, "process.py", "--seed", "-1", "--root", "."], 2),
    ([sys.executable, "budget.py", "--no-such-option"], 2),
    ([sys.executable, "-m", "jclip.extract", "--model", "x", "--images", ".", "--out", "o", "--batch-size", "0"], 2),
    ([sys.executable, "-m", "jclip.fewshot", "--model", "x", "--data", ".", "--eval-episodes", "0"], 2),
    ([sys.executable, "-m", "jclip.finetune", "predict", "--weights", "nope.pkl", "--head", "h", "--images", "."], 2),
    (["bash", "val.sh", "sweep", "--seed", "12345678901234567890"], 2),
    (["bash", "train.sh", "--set", "lpp.seed=-1"], 2),
])
def test_real_entry_points_fail_in_one_line(argv, status):
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    one_error_line(r.stderr)
    assert r.returncode == status, r.stderr


# --------------------------------------------------------------------------
# The boundary itself
# --------------------------------------------------------------------------

def _raise(e):
    def main():
        raise e
    return main


@pytest.mark.parametrize("error,status,text", [
    (ValueError("x.npz: params: missing"), 1, "error: x.npz: params: missing"),
    (FileNotFoundError(2, "No such file or directory", "/data/a.jpg"), 1,
     "error: /data/a.jpg: No such file or directory"),
    (UsageError("--thing: bad"), 2, "error: --thing: bad"),
    (KeyboardInterrupt(), 130, "error: interrupted"),
    (SystemExit("error: said so"), 1, "error: said so"),
    (KeyError("params"), 1, "error: internal error: KeyError: 'params' (a bug: set JCLIP_TRACEBACK=1"),
    (ValueError("two\nlines"), 1, "error: two; lines"),
])
def test_run_turns_each_failure_into_one_line(capsys, monkeypatch, error, status, text):
    monkeypatch.delenv(commands.TRACEBACK_ENV, raising=False)
    assert commands.run(_raise(error)) == status
    assert one_error_line(capsys.readouterr().err).startswith(text)


def test_run_status_passes_and_traceback_on_request(capsys, monkeypatch):
    assert commands.run(lambda: None) == 0 and commands.run(lambda: 3) == 3
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(commands.TRACEBACK_ENV, "1")
    assert commands.run(_raise(TypeError("bug"))) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: internal error: TypeError: bug")


def test_run_under_mpirun_names_the_rank_and_ends_every_rank(capsys, monkeypatch):
    ended = []
    monkeypatch.setattr(distributed, "in_mpi", lambda: True)
    monkeypatch.setattr(distributed, "end_run", lambda message, status: ended.append((message, status)))
    commands.run(_raise(UsageError("--x: bad")))
    commands.run(_raise(RuntimeError("disk")))
    commands.run(lambda: 2)
    assert ended[0] == ("--x: bad", 2) and ended[1][0].startswith("internal error: RuntimeError: disk")
    assert ended[2] == ("exit status 2", 2)
    with pytest.raises(distributed.Done):          # a rank whose share is over leaves quietly
        commands.run(_raise(distributed.Done()))


# --------------------------------------------------------------------------
# Seeds, devices and --features: refused before any work
# --------------------------------------------------------------------------

@pytest.fixture
def pipeline_config(tmp_path):
    """A configuration whose every path is under tmp_path, an earlier run's
    manifest in its out_dir (which a refused run must leave as it was)."""
    cfg = json.load(open(DEFAULT_JSON))
    cfg["data"]["root"] = str(tmp_path / "Dataset")
    cfg["out_dir"] = str(tmp_path / "out")
    cfg["cache_dir"] = str(tmp_path / "cache")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text('{"earlier": "run"}\n')
    return path


def _tree(folder):
    return sorted((os.path.relpath(os.path.join(d, f), folder), open(os.path.join(d, f), "rb").read())
                  for d, _, files in os.walk(folder) for f in files)


@pytest.fixture
def no_work(monkeypatch):
    """The pipeline's train/test/report must not be reached."""
    import jclip.pipeline.test
    import jclip.pipeline.train

    def reached(*a, **k):
        raise AssertionError("the work started")
    monkeypatch.setattr(jclip.pipeline.train, "train", reached)
    monkeypatch.setattr(jclip.pipeline.test, "test", reached)


@pytest.mark.parametrize("setting,says", [
    ("lpp.seed=-1", "lpp.seed (--set): -1 is below the minimum 0"),
    ("dog_head.seed=-1", "dog_head.seed (--set): -1 is below the minimum 0"),
    ("lpp.seed=12345678901234567890", "lpp.seed (--set): 12345678901234567890 is "),
    ("data.seed=4294967296", "data.seed (--set): 4294967296 is above the maximum"),
    ("dog_head.seed=1.5", "dog_head.seed (--set): expected a whole number"),
])
def test_train_refuses_a_seed_outside_numpys_range_before_writing(pipeline_config, capsys, no_work, setting, says):
    out = pipeline_config.parent / "out"
    before = _tree(out)
    status, err = run_in_process(capsys, "pipeline train", ["--config", str(pipeline_config), "--set", setting])
    assert status == 2 and says in one_error_line(err), err
    assert _tree(out) == before and not (pipeline_config.parent / "cache").exists()


def test_seed_bounds_hold_for_every_seed_the_pipeline_has():
    from jclip.pipeline.config import load_config
    cfg = load_config(None, ["lpp.seed=4294967295", "dog_head.seed=0", "data.seed=4294967295"])
    assert (cfg.lpp.seed, cfg.dog_head.seed, cfg.data.seed) == (4294967295, 0, 4294967295)
    np.random.default_rng(cfg.lpp.seed)          # the largest allowed is a seed numpy takes
    np.random.RandomState(cfg.data.seed)


@pytest.mark.parametrize("name,argv", [
    ("pipeline test", ["--set", "device=cuda"]),
    ("pipeline train", ["--set", "device=cuda"]),
    ("val report", ["--set", "device=cuda"]),
])
def test_cuda_asked_for_where_there_is_none_is_refused_before_loading(pipeline_config, capsys, monkeypatch,
                                                                      no_work, name, argv):
    monkeypatch.setattr(commands, "cuda_available", lambda: False)
    status, err = run_in_process(capsys, name, ["--config", str(pipeline_config), *argv])
    line = one_error_line(err)
    assert status == 2 and "device" in line and "no CUDA on this machine" in line, line


@pytest.mark.parametrize("name,argv", [
    ("extract", ["--model", "x", "--images", ".", "--out", "o", "--device", "cuda"]),
    ("fewshot", ["--model", "x", "--data", ".", "--device", "cuda"]),
])
def test_device_option_cuda_without_cuda(capsys, monkeypatch, name, argv):
    monkeypatch.setattr(commands, "cuda_available", lambda: False)
    status, err = run_in_process(capsys, name, argv)
    assert status == 2 and "argument --device: cuda: no CUDA" in one_error_line(err)


def test_cuda_is_accepted_where_it_is_available(monkeypatch):
    monkeypatch.setattr(commands, "cuda_available", lambda: True)
    assert commands.device("cuda") == "cuda"
    commands.check_device("cuda", "cfg: device")


@pytest.mark.parametrize("features,says", [
    (["rn50=DIR"], "no backbone 'rn50' in"),
    (["vit"], "--features 'vit': expected KEY=DIR"),
    (["vit=MISSING"], "no such folder"),
    (["vit=DIR", "vit=DIR"], "--features vit: given twice"),
])
def test_features_keys_must_be_configured_backbones(pipeline_config, capsys, no_work, tmp_path, features, says):
    argv = ["--config", str(pipeline_config)]
    for f in features:
        argv += ["--features", f.replace("MISSING", str(tmp_path / "missing")).replace("DIR", str(tmp_path))]
    status, err = run_in_process(capsys, "pipeline test", argv)
    assert status == 2 and says in one_error_line(err), err


# --------------------------------------------------------------------------
# Class names as the text encoder sees them
# --------------------------------------------------------------------------

def test_class_key_is_the_prompt_name_case_and_separators_folded():
    from jclip.heads.templates import class_key, clean_class_name
    assert class_key("Golden_Retriever") == class_key("golden retriever") == class_key("Thu-dog_Golden-Retriever")
    assert class_key("Golden_Retriever") == clean_class_name("Golden_Retriever").lower()
    assert class_key("Shiba_Dog") != class_key("Golden_Retriever")


def _contest_lists(root, seen, unseen):
    root.mkdir(parents=True, exist_ok=True)
    (root / "TrainSet").mkdir(exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(seen)))
    (root / "classes_b.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(seen + unseen)))


@pytest.mark.parametrize("unseen,says", [
    (["golden retriever"], "unseen class 'golden retriever' is the training class 'Golden_Retriever'"),
    (["GOLDEN-RETRIEVER"], "is the training class 'Golden_Retriever'"),
    (["Shiba", "shiba"], "unseen classes 'Shiba' and 'shiba' are one class"),
])
def test_pipeline_refuses_an_unseen_class_that_is_a_training_class(tmp_path, capsys, no_work, unseen, says):
    seen = ["Animal_Cat", "Animal_Bee", "Thu-dog_Akita", "Thu-dog_Pug", "Thu-dog_Corgi", "Golden_Retriever"]
    _contest_lists(tmp_path / "Dataset", seen, unseen)
    cfg = json.load(open(DEFAULT_JSON))
    cfg["data"]["root"] = str(tmp_path / "Dataset")
    cfg["out_dir"] = str(tmp_path / "out")
    cfg["cascade"].update(unseen_from=len(seen), dog_range=[0, 5])
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    for name in ("pipeline train", "pipeline test", "budget"):
        status, err = run_in_process(capsys, name, ["--config", str(path)])
        line = one_error_line(err)
        assert status == 2 and "data.test_classes" in line and says in line, line
    cfg["cascade"]["unseen_from"] = len(seen)
    _contest_lists(tmp_path / "Dataset", seen, ["Shiba"])       # a new class passes
    from jclip.pipeline.config import check_class_lists, load_config
    check_class_lists(load_config(str(path)))


def _image_folder(root, classes, per_class=3, size=24):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_fewshot_class_splits_compare_names_as_the_prompts_do(tmp_path, capsys):
    from jclip.fewshot.datasets import DatasetError, load_class_splits
    _image_folder(tmp_path / "train", ["Golden_Retriever", "cat"])
    _image_folder(tmp_path / "test", ["golden retriever", "dog"])
    with pytest.raises(DatasetError, match="Golden_Retriever are also test classes.*class-disjoint"):
        load_class_splits(str(tmp_path / "train"), str(tmp_path / "test"))
    status, err = run_in_process(capsys, "fewshot", ["--train-classes", str(tmp_path / "train"), "--test-classes",
                                                     str(tmp_path / "test"), "--model", "no-model.pkl"])
    assert status == 2 and "class-disjoint" in one_error_line(err)


# --------------------------------------------------------------------------
# The few-shot CLI
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("torch")
    from reference import build_reference
    from jclip.weights.checkpoint import save_state_dict
    _, state = build_reference("tiny-vit", seed=11)
    path = tmp_path_factory.mktemp("model") / "tiny.pkl"
    save_state_dict(path, state, {"model": "tiny-vit"})
    return str(path)


def _fewshot(tmp_path, data, model, *more):
    return ["--data", str(data), "--model", model, "--shots", "1", "--seeds", "1", "--methods", "zeroshot",
            "linear_probe", "--templates", "single", "--output", str(tmp_path / "out"),
            "--cache", str(tmp_path / "cache"), "--no-progress", *more]


@pytest.mark.parametrize("option,value", [("--batch-size", "0"), ("--eval-episodes", "0"), ("--shots", "0"),
                                          ("--seeds", "-1"), ("--support", "0"), ("--query", "0")])
def test_fewshot_counts_of_zero_are_refused(tmp_path, capsys, option, value):
    data = _image_folder(tmp_path / "d", ["a", "b"])
    status, err = run_in_process(capsys, "fewshot", _fewshot(tmp_path, data, "x.pkl", option, value))
    assert status == 2 and f"argument {option}" in one_error_line(err)


def test_fewshot_base_to_new_with_one_class_is_refused_before_the_model(tmp_path, capsys):
    data = _image_folder(tmp_path / "d", ["only"])
    status, err = run_in_process(capsys, "fewshot", _fewshot(tmp_path, data, str(tmp_path / "no-model.pkl"),
                                                             "--base-to-new"))
    line = one_error_line(err)
    assert status == 2 and "--base-to-new needs at least 2 classes" in line, line


def test_fewshot_skips_a_symlink_loop_and_a_corrupt_image_with_a_count(tmp_path, capsys, tiny_model):
    data = _image_folder(tmp_path / "d", ["red", "blue"], per_class=4)
    os.symlink("loop.png", data / "red" / "loop.png")           # a link to itself
    (data / "blue" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    capsys.readouterr()
    status = COMMANDS["fewshot"].main(_fewshot(tmp_path, data, tiny_model))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "Traceback" not in captured.err and "error:" not in captured.err
    assert f"warning: {data / 'red' / 'loop.png'}: unreadable image" in captured.err
    assert f"{data}: 1 unreadable image(s) skipped" in captured.err
    assert "broken.png: unreadable image" in captured.err and "1 unreadable image(s) skipped" in captured.err
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(rows) == 3                       # header + zeroshot + linear probe
    # a second run reads the features from the cache: the zero row is still skipped and reported
    assert COMMANDS["fewshot"].main(_fewshot(tmp_path, data, tiny_model)) == 0
    assert "broken.png: unreadable image" in capsys.readouterr().err


def test_fewshot_a_class_with_no_readable_image_is_one_line(tmp_path, capsys, tiny_model):
    data = _image_folder(tmp_path / "d", ["red", "blue"], per_class=2)
    for f in (data / "blue").iterdir():
        f.write_bytes(b"garbage")
    status, err = run_in_process(capsys, "fewshot", _fewshot(tmp_path, data, tiny_model, "--test-fraction", "0.5"))
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert status == 2 and "Traceback" not in err and len(line) == 1 and "no readable image for class(es) blue" in line[0]


@pytest.mark.parametrize("models", [["ViT-B/32", "no-such-model"], ["ViT-L-14/no_such_tag"]])
def test_convert_refuses_an_unknown_model_name_before_any_work(tmp_path, capsys, models):
    # every --models name is checked first: the known one is not downloaded
    # or converted while the unknown one waits for its turn
    src, out = tmp_path / "src", tmp_path / "out"
    status = COMMANDS["convert"].main(["--models", *models, "--src", str(src), "--out-dir", str(out)])
    line = one_error_line(capsys.readouterr().err)
    assert status == 2 and models[-1] in line and "unknown model" in line
    assert not src.exists() and not out.exists()
