"""Every jclip command, its argument checks and its one error boundary.

``COMMANDS`` names every command a user runs (``python convert.py``, ``bash
train.sh``, ``python -m jclip.extract``, ...) and points at the module that
builds its parser (each module keeps its own ``build_parser()``); tests and
the documentation walk it, so a new option is covered without being listed.

Every command parses with ``CommandParser`` and runs its work through
``run(main_fn)``.  What a user sees when something is wrong is one line on
stderr, ``error: <what is wrong, naming the file or option>``, and the exit
status:

    0    done
    1    the work failed: a file found unusable while working, a disk or
         network error, a failed conversion (``error: <file>: ...``)
    2    a usage error, found before any work: an unknown or malformed
         option, a value out of range (a count of 0, a seed outside numpy's
         [0, 2**32 - 1]), a file or folder given that does not exist, CUDA
         asked for where there is none, a bad configuration or class list
    130  interrupted (Ctrl-C)

A Python traceback is a bug: an unexpected exception is reported as
``error: internal error: <Type>: <message> (a bug: set JCLIP_TRACEBACK=1 for
the traceback)`` with status 1.  Under ``mpirun`` a failing rank's line names
the rank (``error: rank R of N: ...``) and ends every rank
(``jclip.distributed``).
"""
import argparse
import importlib
import math
import os
import sys
import traceback
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Type

from . import distributed

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
TRACEBACK_ENV = "JCLIP_TRACEBACK"
SEED_MAX = 2 ** 32 - 1          # numpy's default_rng / RandomState take seeds in [0, 2**32 - 1]
DEVICES = ("cpu", "cuda")


class UsageError(ValueError):
    """A bad option, argument or setting, found before any work (exit status 2)."""


class CommandParser(argparse.ArgumentParser):
    """argparse for every jclip command: an error is the one line
    ``error: <prog>: <message>`` (no usage dump), raised as ``UsageError`` so
    that ``run`` prints it and returns status 2.  Sub-commands inherit it."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


# --------------------------------------------------------------------------
# Argument types: each refuses a bad value in argparse's own error line
# --------------------------------------------------------------------------

def _integer(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def positive_int(text: str) -> int:
    """A count that must be at least 1 (``--batch-size``, ``--workers``, ...)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A count that may be 0 (``--val-per-class 0``: none)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text!r}")
    return value


def seed(text: str) -> int:
    """A random seed: a whole number in numpy's range [0, 2**32 - 1]."""
    value = _integer(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed must be a whole number from 0 to {SEED_MAX}, not {text!r}")
    return value


def number(min: Optional[float] = None, gt: Optional[float] = None, max: Optional[float] = None,
           lt: Optional[float] = None) -> Callable[[str], float]:
    """A finite float type with bounds (``gt``/``lt`` strict): ``number(gt=0)``."""
    bounds = [(b, op) for b, op in ((min, ">="), (gt, ">"), (max, "<="), (lt, "<")) if b is not None]
    ok = {">=": lambda v, b: v >= b, ">": lambda v, b: v > b, "<=": lambda v, b: v <= b, "<": lambda v, b: v < b}

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, not {text!r}")
        for b, op in bounds:
            if not ok[op](value, b):
                raise argparse.ArgumentTypeError(f"must be {op} {b:g}, not {text!r}")
        return value
    parse.__name__ = "number"
    parse.bounds = tuple(bounds)
    return parse


positive_float = number(gt=0)
non_negative_float = number(min=0)


def existing_file(text: str) -> str:
    """A file that must exist."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file" if not os.path.exists(text)
                                         else f"{text}: not a file")
    return text


def existing_dir(text: str) -> str:
    """A folder that must exist."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: no such folder" if not os.path.exists(text)
                                         else f"{text}: not a folder")
    return text


def existing_path(text: str) -> str:
    """A file or a folder (an image folder or a list file) that must exist."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such folder or file")
    return text


def checked_later(check: Callable[[str], str]) -> Callable[[str], str]:
    """A type that keeps the text as given and runs ``check`` in
    ``check_later`` (for a command whose other options must be refused first)."""
    def keep(text: str) -> str:
        return text
    keep.__name__ = getattr(check, "__name__", "path")
    keep.check = check
    return keep


def check_later(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Run the deferred checks (``checked_later``) of every option given;
    UsageError ``<prog>: argument <option>: <what is wrong>``."""
    for action in parser._actions:
        check = getattr(action.type, "check", None)
        value = getattr(args, action.dest, None)
        if check is None or value is None or value == action.default:
            continue
        for item in value if isinstance(value, list) else [value]:
            try:
                check(item)
            except argparse.ArgumentTypeError as e:
                raise UsageError(f"{parser.prog}: argument {'/'.join(action.option_strings)}: {e}") from None


def cuda_available() -> bool:
    """Whether CUDA can run here: an NVIDIA driver is loaded and jclip's Jittor
    defaults did not switch CUDA off (``jclip.jittor_env``; no Jittor import)."""
    from .jittor_env import has_gpu
    return has_gpu() and os.environ.get("nvcc_path", None) != ""


def device(text: str) -> str:
    """``cpu`` or ``cuda``; ``cuda`` only where it is available."""
    if text not in DEVICES:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(DEVICES)})")
    if text == "cuda" and not cuda_available():
        raise argparse.ArgumentTypeError("cuda: no CUDA on this machine (no NVIDIA driver loaded); use cpu")
    return text


def check_device(value: Optional[str], where: str) -> None:
    """A configured device (``device`` in a configuration): UsageError naming
    ``where`` when it asks for CUDA on a machine without it."""
    if value == "cuda" and not cuda_available():
        raise UsageError(f"{where}: cuda: no CUDA on this machine (no NVIDIA driver loaded); "
                         "use cpu or null (the default: CUDA when available)")


def key_values(items: Iterable[str], option: str, example: str) -> Dict[str, str]:
    """``["vit=DIR", ...]`` -> {key: value}; UsageError for a malformed or repeated item."""
    out: Dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{option} {item!r}: expected KEY=DIR (e.g. {example})")
        if key in out:
            raise UsageError(f"{option} {key}: given twice ({out[key]} and {value})")
        out[key] = value
    return out


def check_keys(given: Mapping[str, str], known: Sequence[str], option: str, where: str) -> None:
    """Every key of ``given`` one of ``known`` (UsageError naming the option)."""
    unknown = [k for k in given if k not in known]
    if unknown:
        raise UsageError(f"{option} {unknown[0]}={given[unknown[0]]}: no backbone {unknown[0]!r} in "
                         f"{where} (its backbones: {', '.join(known)})")


# --------------------------------------------------------------------------
# The boundary
# --------------------------------------------------------------------------

def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def describe(error: BaseException) -> str:
    """An expected failure as one line naming the file (OSError) or what is wrong."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        names = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 is not None else "")
        return _one_line(f"{names}: {error.strerror}")
    return _one_line(str(error)) or type(error).__name__


def _from_exit(e: SystemExit) -> Tuple[int, Optional[str]]:
    """(status, message) of a SystemExit: ``sys.exit("error: ...")`` is status 1."""
    if e.code is None:
        return OK, None
    if isinstance(e.code, int):
        return e.code, None
    text = _one_line(str(e.code))
    return FAILED, text[len("error: "):] if text.startswith("error: ") else text


def run(main_fn: Callable[[], Optional[int]], usage_errors: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run a command's work and return its exit status (see the module
    docstring), having printed at most one ``error: ...`` line.

    Parameters: main_fn: parses the arguments and does the work; returns an
    exit status (None: 0) or raises; usage_errors: further exception types
    that mean a usage error (status 2) for this command, besides UsageError
    and the configuration's ConfigError.
    Under mpirun a failing rank's line names the rank and ends every rank;
    ``distributed.Done`` (a rank whose share is over) passes through.
    """
    from .config_schema import ConfigError
    try:
        status, message = main_fn(), None
        status = OK if status is None else status
    except distributed.Done:
        raise
    except SystemExit as e:
        status, message = _from_exit(e)
    except KeyboardInterrupt:
        status, message = INTERRUPTED, "interrupted"
    except (UsageError, ConfigError) + tuple(usage_errors) as e:
        status, message = USAGE, describe(e)
    except MemoryError:
        status, message = FAILED, "out of memory"
    except (ValueError, OSError) as e:
        status, message = FAILED, describe(e)
    except Exception as e:      # noqa: B902  a bug: one line, the traceback on request
        if os.environ.get(TRACEBACK_ENV):
            traceback.print_exc()
        status, message = FAILED, (f"internal error: {type(e).__name__}: {_one_line(str(e))} "
                                   f"(a bug: set {TRACEBACK_ENV}=1 for the traceback)")
    if status and distributed.in_mpi():
        distributed.end_run(message or f"exit status {status}", status)   # names the rank; ends every rank
    if message:
        sys.stdout.flush()
        print(f"error: {message}", file=sys.stderr, flush=True)
    return status


# --------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------

class Command:
    """One command: ``COMMANDS[name]()`` builds its parser; ``.main(argv)``
    runs it in this process (returns the exit status); ``.entry`` is how a
    user starts it."""

    def __init__(self, name: str, module: str, entry: str, sub: Optional[str] = None):
        self.name, self.module, self.entry, self.sub = name, module, entry, sub

    def __call__(self) -> argparse.ArgumentParser:
        parser = importlib.import_module(self.module).build_parser()
        return subparser(parser, self.sub) if self.sub else parser

    def module_parser(self) -> argparse.ArgumentParser:
        """The whole parser of the module (with every sub-command)."""
        return importlib.import_module(self.module).build_parser()

    def main(self, argv: Sequence[str] = ()) -> int:
        argv = [self.sub, *argv] if self.sub else list(argv)
        return importlib.import_module(self.module).main(argv)

    def __repr__(self) -> str:
        return f"Command({self.name!r}: {self.entry})"


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of sub-command ``name`` of ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(f"{parser.prog} has no sub-commands")


COMMANDS: Dict[str, Command] = {c.name: c for c in (
    Command("convert", "jclip.weights.convert_cli", "python convert.py"),
    Command("process", "jclip.data.process_cli", "python process.py"),
    Command("budget", "jclip.pipeline.budget_cli", "python budget.py"),
    Command("pipeline train", "jclip.pipeline.cli", "bash train.sh", "train"),
    Command("pipeline test", "jclip.pipeline.cli", "bash test.sh", "test"),
    Command("val report", "jclip.validate.cli", "bash val.sh report", "report"),
    Command("val sweep", "jclip.validate.cli", "bash val.sh sweep", "sweep"),
    Command("extract", "jclip.extract", "python -m jclip.extract"),
    Command("fewshot", "jclip.fewshot.cli", "python -m jclip.fewshot"),
    Command("finetune train", "jclip.finetune.cli", "python -m jclip.finetune train", "train"),
    Command("finetune predict", "jclip.finetune.cli", "python -m jclip.finetune predict", "predict"),
)}
