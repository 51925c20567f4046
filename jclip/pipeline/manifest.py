"""``out/manifest.json``: what train.sh wrote, and the checks test.sh and val.sh
make against it before they use a trained head.

train.sh removes the old manifest before it writes the first head and writes
the new one last, so a run killed half-way leaves no manifest; and every head
file's SHA-256 is recorded, so a head replaced after training (or by a killed
run next to an old manifest) is refused instead of silently used.
"""
import json
import os
from typing import Any, Dict

from ..data.contest import ContestFormatError
from ..io import atomic_write_text, sha256_file

MANIFEST = "manifest.json"
# the settings that shape the trained heads: test.sh and val.sh must use the same
TRAIN_SETTINGS = ("backbones", "templates", "domain_suffix", "lpp", "dog_head")


def manifest_path(cfg) -> str:
    return os.path.join(cfg.out_dir, MANIFEST)


def start(cfg) -> None:
    """Remove the previous manifest before train.sh replaces any head."""
    path = manifest_path(cfg)
    if os.path.isfile(path):
        os.remove(path)


def write(cfg, manifest: Dict[str, Any]) -> str:
    """Write the manifest atomically (train.sh's last step); returns its path."""
    path = manifest_path(cfg)
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path


def output_entry(path: str, **extra) -> Dict[str, Any]:
    """A manifest ``outputs`` entry: the file, its SHA-256 and ``extra`` facts."""
    return {"path": path, "sha256": sha256_file(path), **extra}


def read(cfg) -> Dict[str, Any]:
    """The manifest of ``cfg``'s out_dir, checked: trained with these settings, and
    every head file still the one train.sh wrote.

    Raises ContestFormatError with a message that says to run train.sh.
    """
    path = manifest_path(cfg)
    if not os.path.isfile(path):
        raise ContestFormatError(f"{path}: no trained heads; run train.sh first")
    with open(path, encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise ContestFormatError(f"{path}: not valid JSON ({e}); run train.sh again") from None
    check_trained_with(cfg, manifest)
    check_outputs(manifest, path)
    return manifest


def check_trained_with(cfg, manifest: Dict[str, Any]) -> None:
    """The settings that shape the trained heads must be those train.sh used."""
    trained, now = manifest.get("config", {}), cfg.to_dict()
    for key in TRAIN_SETTINGS:
        if key in trained and trained[key] != now.get(key):
            raise ContestFormatError(
                f"{cfg.path}: `{key}` differs from the one the heads in {cfg.out_dir} "
                f"were trained with ({json.dumps(trained[key])[:80]}); run train.sh with this "
                f"configuration first")


def check_outputs(manifest: Dict[str, Any], path: str) -> None:
    """Every file train.sh recorded must exist with the SHA-256 it recorded."""
    for name, entry in manifest.get("outputs", {}).items():
        head = entry.get("path")
        if not head or not os.path.isfile(head):
            raise ContestFormatError(f"{head}: the {name} head that {path} lists is missing; "
                                     f"run train.sh again")
        if sha256_file(head) != entry.get("sha256"):
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
