"""The console scripts pyproject.toml declares (``pip install .`` makes them):
each resolves to a callable, answers ``--help`` with status 0 when called as
the installed script calls it (``sys.exit(main())`` with ``sys.argv`` set),
and every command in ``jclip.commands.COMMANDS`` has one.  Nothing is
installed: the table is read from pyproject.toml."""
import importlib
import os
import sys

import pytest

try:
    import tomllib
except ImportError:      # Python < 3.11
    tomllib = pytest.importorskip("tomli")

from jclip.commands import COMMANDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _f:
    SCRIPTS = tomllib.load(_f)["project"]["scripts"]


def resolve(target):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_command_has_an_entry_point():
    targets = {target.partition(":")[0] for target in SCRIPTS.values()}
    missing = sorted(name for name, cmd in COMMANDS.items() if cmd.module not in targets)
    assert missing == [], f"commands with no console script: {missing}"
    assert all(target.endswith(":main") for target in SCRIPTS.values())
    assert all(name.startswith("jclip-") for name in SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_entry_point_resolves_and_answers_help(name, monkeypatch, capsys):
    main = resolve(SCRIPTS[name])
    assert callable(main)
    module = SCRIPTS[name].partition(":")[0]
    commands = [c for c in COMMANDS.values() if c.module == module]
    assert commands and all(importlib.import_module(c.module).main is main for c in commands)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    assert main() == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--help" in out
    for c in commands:           # each sub-command's own help, as `jclip-validate sweep --help`
        if c.sub:
            monkeypatch.setattr(sys, "argv", [name, c.sub, "--help"])
            assert main() == 0
            assert capsys.readouterr().out.startswith("usage:")


def test_a_bad_option_is_one_line_with_status_2(monkeypatch, capsys):
    main = resolve(SCRIPTS["jclip-convert"])
    monkeypatch.setattr(sys, "argv", ["jclip-convert", "--no-such-option"])
    assert main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--no-such-option" in err[0]
