"""``out/manifest.json``: what train.sh wrote, and the checks test.sh and val.sh
make against it before they use a trained head.

A retrain never touches the previous state until its own is complete:
``begin`` gives it a fresh staging folder inside ``out_dir`` for every file it
writes (heads, the dog head's validation list); ``commit`` checks each staged
head against the SHA-256 it records, writes the manifest naming the staged
files (one atomic rename: from here on the new heads are the trained state),
installs them under their usual names (hard links, each atomic), writes the
manifest again with those names, and removes the staging folder.  A failure
or a SIGKILL at any point leaves a manifest whose every head is present and
the one it records: the previous run's, or the new one's.  Every head file's
SHA-256 is recorded, so a head replaced after training is refused instead of
silently used.  The manifest itself is checked against ``SCHEMA``.

The manifest names the files inside ``out_dir`` relative to its own folder
(``lpp_rn.npz``, ``.train-<pid>-XXXX/lpp_rn.npz``), so a copied or moved
``out_dir`` uses its own heads; in memory (``read``) they are absolute paths.
Manifests written before this (no ``RELATIVE`` key) name them as train.sh was
given them, relative to its working directory or absolute.
"""
import atexit
import json
import os
import shutil
import tempfile
from typing import Any, Dict

from ..data.contest import ContestFormatError
from ..file_schema import (Any_, Bool, DictOf, FileFormatError, Float, Int, Maybe, OneOf, Record,
                           Sha256, Str, read_json)
from ..io import atomic_copy, atomic_write_text, fsync_dir, sha256_file

MANIFEST = "manifest.json"
STAGING = ".train-"      # a run's staging folder inside out_dir: .train-<pid>-XXXX
RELATIVE = "outputs_relative_to_manifest"   # true: outputs' paths are relative to the manifest's folder
# the settings that shape the trained heads: test.sh and val.sh must use the same
TRAIN_SETTINGS = ("backbones", "templates", "domain_suffix", "lpp", "dog_head")

_FILE = Record({"path": Str(), "sha256": Maybe(Sha256())})
_OUTPUT = Record({"path": Str(), "sha256": Sha256(),     # the dog head's accuracy is text ("0.4000")
                  "val_accuracy": Maybe(OneOf(Float(), Str(max_len=32))),
                  "best_epoch": Maybe(Int(0, 1 << 31))}, optional=("val_accuracy", "best_epoch"), extra=True)
_BACKBONE = Record({"model": Str(), "weights": Str(), "source_sha256": Maybe(Sha256()),
                    "sha256": Maybe(Sha256())}, optional=("source_sha256", "sha256"))
# the manifest (docs/security.md); stages other runs add may carry more top-level keys
SCHEMA = Record({
    "config": DictOf(Any_()), "config_file": Str(), "device": Str(),
    "train_4shot": Record({"path": Str(), "sha256": Sha256()}), "val": _FILE,
    "backbones": DictOf(_BACKBONE), "outputs": DictOf(_OUTPUT), "split": Any_(),
    "times_s": DictOf(Float(0)), "total_s": Float(0), RELATIVE: Bool()},
    optional=("split", "times_s", "total_s", RELATIVE), extra=True)


_abandon = {}            # staging folder -> its clean-up at exit (until committed)


def manifest_path(cfg) -> str:
    return os.path.join(cfg.out_dir, MANIFEST)


def _stored(manifest: Dict[str, Any], folder: str) -> Dict[str, Any]:
    """The form written to ``folder/manifest.json``: a copy whose outputs inside
    ``folder`` are named relative to it."""
    m = json.loads(json.dumps(manifest))
    base = os.path.abspath(folder)
    for entry in m["outputs"].values():
        p = os.path.abspath(entry["path"])
        if os.path.commonpath([p, base]) == base:
            entry["path"] = os.path.relpath(p, base)
    m[RELATIVE] = True
    return m


def _resolved(manifest: Dict[str, Any], path: str) -> Dict[str, Any]:
    """``manifest`` as read from ``path``, its outputs' paths made absolute (the
    form train.sh builds in memory: no RELATIVE key)."""
    base = os.path.dirname(os.path.abspath(path)) if manifest.pop(RELATIVE, False) else os.getcwd()
    for entry in manifest["outputs"].values():
        entry["path"] = os.path.normpath(os.path.join(base, entry["path"]))   # an absolute one stays
    return manifest


def _listed_folders(out_dir: str) -> set:
    """The folders of the head files the current manifest lists (if readable)."""
    path = os.path.join(out_dir, MANIFEST)
    try:
        m = _resolved(read_json(path, SCHEMA), path)
    except FileFormatError:
        return set()
    return {os.path.dirname(e["path"]) for e in m["outputs"].values()}


def _remove_unless_listed(out_dir: str, staging: str) -> None:
    """Remove ``staging`` unless the manifest names files in it (a commit that
    failed after writing the manifest: those heads are the trained state)."""
    if os.path.abspath(staging) not in _listed_folders(out_dir):
        shutil.rmtree(staging, ignore_errors=True)


def begin(cfg) -> str:
    """A fresh staging folder in ``out_dir`` for this run's files; staging
    folders of earlier runs that died are removed unless the current manifest
    lists them.  Returns the folder."""
    out = cfg.out_dir
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if name.startswith(STAGING) and os.path.isdir(os.path.join(out, name)):
            _remove_unless_listed(out, os.path.join(out, name))
    staging = tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-", dir=out)
    # a run that fails (an exception, sys.exit) leaves no staging folder behind;
    # one killed outright is removed by the next begin()
    _abandon[staging] = lambda: _remove_unless_listed(out, staging)
    atexit.register(_abandon[staging])
    return staging


def write(cfg, manifest: Dict[str, Any]) -> str:
    """Write the manifest atomically (checked against SCHEMA as read back); returns its path."""
    path = manifest_path(cfg)
    atomic_write_text(path, json.dumps(_stored(manifest, cfg.out_dir), indent=1) + "\n", check=read_checked)
    return path


def commit(cfg, manifest: Dict[str, Any], staging: str) -> str:
    """Make the heads staged in ``staging`` the trained state (module
    docstring); returns the manifest's path."""
    check_outputs(manifest, os.path.join(staging, MANIFEST))   # every staged head verified first
    write(cfg, manifest)                                        # the new state, in the staging folder
    staged = os.path.abspath(staging)
    final = json.loads(json.dumps(manifest))
    for name in sorted(os.listdir(staging)):
        atomic_copy(os.path.join(staging, name), os.path.join(cfg.out_dir, name))
    for entry in final["outputs"].values():
        if os.path.abspath(os.path.dirname(entry["path"])) == staged:
            entry["path"] = os.path.join(cfg.out_dir, os.path.basename(entry["path"]))
    check_outputs(final, manifest_path(cfg))
    path = write(cfg, final)                                    # the same heads, under their names
    for name in os.listdir(cfg.out_dir):     # this run's staging folder, and any a killed run left
        if name.startswith(STAGING) and os.path.isdir(os.path.join(cfg.out_dir, name)):
            _remove_unless_listed(cfg.out_dir, os.path.join(cfg.out_dir, name))
    fsync_dir(cfg.out_dir)
    if staging in _abandon:
        atexit.unregister(_abandon.pop(staging))
    return path


def output_entry(path: str, **extra) -> Dict[str, Any]:
    """A manifest ``outputs`` entry: the file, its SHA-256 and ``extra`` facts."""
    return {"path": path, "sha256": sha256_file(path), **extra}


def read_checked(path: str) -> Dict[str, Any]:
    """A manifest file checked against SCHEMA, its ``config`` a valid
    configuration (FileFormatError naming the file and key); its outputs'
    paths absolute."""
    from .config import ConfigError, config_from_dict
    manifest = _resolved(read_json(path, SCHEMA), path)
    try:
        cfg = config_from_dict(manifest["config"], "config")
    except ConfigError as e:
        raise FileFormatError(path, "", str(e)) from None
    # every head the configuration uses is listed, with the backbone it was trained on
    backbones, outputs = manifest["backbones"], manifest["outputs"]
    seen = manifest.get("seen_head")
    seen = seen.get("head", "lpp") if isinstance(seen, dict) else "lpp"    # older manifests: LP++
    for key in cfg.cascade.lpp_mix:
        if not isinstance(backbones.get(key, {}).get("source_sha256"), str):
            raise FileFormatError(path, f"backbones.{key}.source_sha256", "missing (the backbone of a head)")
        if f"{seen}_{key}" not in outputs:
            raise FileFormatError(path, f"outputs.{seen}_{key}", f"missing (the head of backbone {key!r})")
    if "dog_head" not in outputs:
        raise FileFormatError(path, "outputs.dog_head", "missing")
    if not isinstance(backbones.get("dog", {}).get("sha256"), str):
        raise FileFormatError(path, "backbones.dog.sha256", "missing (the dog head's backbone)")
    return manifest


def read(cfg) -> Dict[str, Any]:
    """The manifest of ``cfg``'s out_dir, checked: its schema, trained with these
    settings, and every head file still the one train.sh wrote.

    Raises ContestFormatError with a message that says to run train.sh.
    """
    path = manifest_path(cfg)
    if not os.path.isfile(path):
        raise ContestFormatError(f"{path}: no trained heads; run train.sh first")
    try:
        manifest = read_checked(path)
    except FileFormatError as e:
        raise ContestFormatError(f"{e}; run train.sh again") from None
    check_trained_with(cfg, manifest)
    check_outputs(manifest, path)
    return manifest


def check_trained_with(cfg, manifest: Dict[str, Any]) -> None:
    """The settings that shape the trained heads must be those train.sh used."""
    trained, now = manifest["config"], cfg.to_dict()
    for key in TRAIN_SETTINGS:
        if key in trained and trained[key] != now.get(key):
            raise ContestFormatError(
                f"{cfg.path}: `{key}` differs from the one the heads in {cfg.out_dir} "
                f"were trained with ({json.dumps(trained[key])[:80]}); run train.sh with this "
                f"configuration first")


def check_outputs(manifest: Dict[str, Any], path: str) -> None:
    """Every file train.sh recorded must exist with the SHA-256 it recorded."""
    for name, entry in manifest["outputs"].items():
        head = entry["path"]
        if not os.path.isfile(head):
            raise ContestFormatError(f"{head}: the {name} head that {path} lists is missing; "
                                     f"run train.sh again")
        if sha256_file(head) != entry["sha256"]:
            raise ContestFormatError(
                f"{head}: not the {name} head that {path} records (SHA-256 differs: a train.sh "
                f"was interrupted or the file was replaced); run train.sh again")


def check_shots(manifest: Dict[str, Any], shots_path: str, out_dir: str) -> None:
    """The 4-shot list must be the one the heads were trained on."""
    if sha256_file(shots_path) != manifest["train_4shot"]["sha256"]:
        raise ContestFormatError(f"{shots_path}: not the 4-shot list the heads in "
                                 f"{out_dir} were trained on; run train.sh again")


def trained_backbones(manifest: Dict[str, Any], keys) -> Dict[str, str]:
    """{key: weights SHA-256} of the CLIP backbones the LP++ heads were trained on."""
    return {k: manifest["backbones"].get(k, {}).get("source_sha256") for k in keys}
