"""Every data file kind jclip writes and reads back, through the mutation
harness (tests/file_kinds.py): extract's index.json, shard records and shard
arrays, the feature cache's image entries and prompt stores, train.sh's
manifest and the sweep's tuned configuration.  Each valid file is written by
jclip's own writer; every mutant (each key removed, each value's type
swapped, each array truncated, NaN-ed, reshaped, re-typed, forged to claim
8 GiB, the bytes truncated) must be refused with one ValueError line naming
the file (and the key), under RLIMIT_AS = 1 GiB, in under a second of CPU.

The readers below are the schema checks the production readers run first
(``jclip.extract.read_shard``, ``jclip.features.cache._read``,
``jclip.pipeline.manifest.read``, ``jclip.pipeline.config.load_config``),
called on one file (the harness names each mutant ``mNNNN.<ext>``).
"""
import dataclasses
import json
import os

import numpy as np
import pytest

from file_kinds import FileKind, JsonFile, NpyFile, NpzHeader, check_kind

SHARD_COUNT, DIM = 8, 16


# ---------------------------------------------------------------- readers (run in the harness's child)

def read_index(path):
    from jclip.extract import INDEX_SCHEMA
    from jclip.file_schema import read_json
    return read_json(path, INDEX_SCHEMA)


def read_shard_record(path):
    from jclip.extract import SHARD_SCHEMA
    from jclip.file_schema import read_json
    return read_json(path, SHARD_SCHEMA)


def read_shard_array(path):
    from jclip.file_schema import Array, read_npy
    return read_npy(path, Array(("float32",), ("count", "dim")), bind={"count": SHARD_COUNT, "dim": DIM},
                    key="features")


def read_image_cache(path):
    from jclip.features.cache import IMAGE_ARRAYS, read_entry
    return read_entry(path, IMAGE_ARRAYS)


def read_prompt_store(path):
    from jclip.features.cache import PROMPT_ARRAYS, read_entry
    return read_entry(path, PROMPT_ARRAYS)


def read_manifest(path):
    from jclip.pipeline.manifest import read_checked
    return read_checked(path)


def read_tuned(path):
    from jclip.pipeline.config import load_config
    return load_config(path)


# ---------------------------------------------------------------- valid files, by jclip's writers

def _features(rows):
    f = np.random.default_rng(0).normal(size=(rows, DIM)).astype(np.float32)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def make_extract(folder):
    """A features folder written by jclip.extract's own writers (no model)."""
    import hashlib
    from jclip import extract
    os.makedirs(folder, exist_ok=True)
    paths = [f"/data/img {i}.jpg" for i in range(SHARD_COUNT + 3)]
    text = extract._paths_text(paths)
    index = {"version": extract.VERSION, "model": "tiny-vit", "weights_sha256": "a" * 64,
             "preprocess_id": "clip-224", "dtype": "float32", "dim": DIM, "shard_size": SHARD_COUNT,
             "images": len(paths), "paths_sha256": hashlib.sha256(text.encode()).hexdigest()}
    extract._prepare(folder, index, text)
    extract._write_shard(folder, 0, 0, _features(SHARD_COUNT), {"/data/img 3.jpg": "cannot identify image"})
    extract._write_shard(folder, 1, SHARD_COUNT, _features(3), {})
    return folder


def make_index(folder):
    return os.path.join(make_extract(folder), "index.json")


def make_shard_record(folder):
    return os.path.join(make_extract(folder), "shard-00000.json")


def make_shard_array(folder):
    return os.path.join(make_extract(folder), "shard-00000.npy")


class _Encoder:
    def __call__(self, items):
        return _features(len(items))


def make_image_cache(folder):
    from PIL import Image
    from jclip.features.cache import encode_images_cached
    os.makedirs(folder, exist_ok=True)
    images = []
    for i in range(3):
        images.append(os.path.join(folder, f"{i}.png"))
        Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(images[-1])
    encode_images_cached(images, _Encoder(), "tiny-vit", "b" * 64, "clip-224", os.path.join(folder, "c"),
                         progress=False)
    (entry,) = os.listdir(os.path.join(folder, "c"))
    return os.path.join(folder, "c", entry)


def make_prompt_store(folder):
    from jclip.features.cache import encode_texts_cached
    encode_texts_cached(["a cat.", "a dog.", "a car."], _Encoder(), "tiny-vit", "b" * 64,
                        os.path.join(folder, "c"), progress=False)
    (entry,) = os.listdir(os.path.join(folder, "c"))
    return os.path.join(folder, "c", entry)


def _config(folder):
    from jclip.pipeline.config import load_config
    return load_config(None, [f"out_dir={os.path.join(folder, 'out')}"])


def make_manifest(folder):
    """A manifest as train.sh writes it (manifest.begin / commit), heads stand-ins."""
    from jclip.pipeline import manifest
    cfg = _config(folder)
    staging = manifest.begin(cfg)
    shots = os.path.join(folder, "train_4shot.txt")
    with open(shots, "w") as f:
        f.write("TrainSet/a/1.jpg 0\n")
    outputs = {}
    for name, acc in (("lpp_rn", None), ("lpp_vit", 0.5), ("dog_head", "0.2500")):
        head = os.path.join(staging, name + ".bin")
        with open(head, "wb") as f:
            f.write(name.encode())
        outputs[name] = manifest.output_entry(head, val_accuracy=acc, best_epoch=3)
    m = {"config": cfg.to_dict(), "config_file": cfg.path, "device": "cpu",
         "train_4shot": manifest.output_entry(shots), "val": {"path": "val.txt", "sha256": None},
         "backbones": {"rn": {"model": "RN101", "weights": "rn.pkl", "source_sha256": "f" * 64},
                       "vit": {"model": "ViT-B/32", "weights": "vit.pkl", "source_sha256": "c" * 64},
                       "dog": {"model": "convnextv2_atto", "weights": "cnx.pkl", "sha256": "d" * 64}},
         "outputs": outputs, "split": {"seed": 3}, "times_s": {"train": 1.5}, "total_s": 2.0}
    return manifest.commit(cfg, m, staging)


def make_tuned(folder):
    """A tuned configuration as the sweep writes it: a configuration + ``_tuned``."""
    from jclip.io import atomic_write_text
    from jclip.pipeline.config import load_config
    tuned = _config(folder).to_dict()
    tuned["_tuned"] = {"by": "python -m jclip.validate sweep", "from": "cascade.json",
                       "val_list_sha256": "e" * 64, "seed": 1, "held_out_classes": ["Animal_cat"],
                       "images": 12, "top1": 0.75, "baseline_top1": 0.5, "trials": 9}
    path = os.path.join(folder, "tuned.json")
    atomic_write_text(path, json.dumps(tuned, indent=1) + "\n", check=load_config)
    return path


# a configuration's optional parts: comments, settings with defaults, a
# mix over fewer backbones
CONFIG_OPTIONAL = ["_doc:removed", "*._doc:removed", "cache_dir:null",
                   "cascade.*_mix.*:removed", "stages*:removed", "sweep:removed", "sweep.*:removed",
                   "budget.limit_on:removed"]


def optional_config(prefix):
    return [f"header:{prefix}{p}" for p in CONFIG_OPTIONAL]


HERE = "test_file_kinds_data"
KINDS = [
    FileKind("extract index.json", make_index, f"{HERE}:read_index", JsonFile()),
    FileKind("extract shard record", make_shard_record, f"{HERE}:read_shard_record", JsonFile(),
             # the unreadable images' names are free text: another text is as valid
             tolerate=["header:unreadable./data/img 3.jpg:removed"]),
    FileKind("extract shard array", make_shard_array, f"{HERE}:read_shard_array", NpyFile("features")),
    FileKind("feature cache, images", make_image_cache, f"{HERE}:read_image_cache", NpzHeader("meta"),
             # another version is an older layout: encoded afresh, never read
             tolerate=["header:version:*"]),
    FileKind("feature cache, prompts", make_prompt_store, f"{HERE}:read_prompt_store", NpzHeader("meta"),
             tolerate=["header:version:*"]),
    FileKind("manifest", make_manifest, f"{HERE}:read_manifest", JsonFile(),
             # facts for people (accuracy, epoch) and provenance may be absent; a manifest
             # without the marker is the older form (paths as train.sh was given them)
             tolerate=optional_config("config.") + [
                 "header:outputs.*.val_accuracy:*", "header:outputs.*.best_epoch:removed",
                 "header:outputs.*.best_epoch:null", "header:split*", "header:times_s*",
                 "header:total_s:removed", "header:outputs_relative_to_manifest:removed"]),
    FileKind("tuned configuration", make_tuned, f"{HERE}:read_tuned", JsonFile(),
             # _tuned is provenance: typed when present, any part may be left out
             tolerate=optional_config("") + ["header:_tuned:removed", "header:_tuned.*:removed"]),
]


def _without_final_newline(kind, tmp_path, problems):
    """The problems less one: a JSON file jclip wrote (ending in a newline)
    without that newline is the same document, rightly accepted."""
    if not isinstance(kind.codec, JsonFile):
        return problems
    data = open(MADE[kind.name], "rb").read()
    assert data.endswith(b"\n")
    return [p for p in problems if p != f"{kind.name}: bytes:truncate@{len(data) - 1}: accepted"]


MADE = {}    # kind name -> the valid file check_kind made


def _remembered(kind):
    def make(folder):
        MADE[kind.name] = kind.make(folder)
        return MADE[kind.name]
    return dataclasses.replace(kind, make=make)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_every_mutant_is_refused_naming_the_file_and_key(kind, tmp_path):
    problems = _without_final_newline(kind, tmp_path, check_kind(_remembered(kind), tmp_path))
    assert not problems, "\n".join(problems[:40]) + f"\n({len(problems)} problems)"


def _damage_index(folder, **change):
    path = os.path.join(folder, "index.json")
    index = json.load(open(path))
    index.update(change)
    with open(path, "w") as f:
        json.dump(index, f)


FOLDER_DAMAGE = [   # (what, damage(folder), file named, key named)
    ("index a list", lambda d: open(os.path.join(d, "index.json"), "w").write("[1, 2]"), "index.json", ""),
    ("shard_size 0", lambda d: _damage_index(d, shard_size=0), "index.json", "shard_size"),
    ("an int for a hash", lambda d: _damage_index(d, paths_sha256=7), "index.json", "paths_sha256"),
    ("a key missing", lambda d: _damage_index(d, dim=None) or _strip(d, "index.json", "dim"), "index.json", "dim"),
    ("paths.txt a line short", lambda d: _rewrite_paths(d, drop=1), "paths.txt", ""),
    ("paths.txt not UTF-8", lambda d: _rewrite_paths(d, raw=b"\xff\xfe\n"), "paths.txt", ""),
    ("record: count text", lambda d: _damage_record(d, count="8"), "shard-00000.json", "count"),
    ("record: hash an int", lambda d: _damage_record(d, sha256=12), "shard-00000.json", "sha256"),
    ("array replaced", lambda d: np.save(os.path.join(d, "shard-00001.npy"), _features(3)[::-1].copy()),
     "shard-00001.npy", ""),
]


def _strip(folder, name, key):
    path = os.path.join(folder, name)
    d = json.load(open(path))
    del d[key]
    json.dump(d, open(path, "w"))


def _damage_record(folder, **change):
    path = os.path.join(folder, "shard-00000.json")
    rec = json.load(open(path))
    rec.update(change)
    json.dump(rec, open(path, "w"))


def _rewrite_paths(folder, drop=0, raw=None):
    """paths.txt changed, index.json's paths_sha256 made to match (only the count or text is wrong)."""
    import hashlib
    p = os.path.join(folder, "paths.txt")
    data = raw if raw is not None else "".join(open(p).read().splitlines(True)[drop:]).encode()
    open(p, "wb").write(data)
    _damage_index(folder, paths_sha256=hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("what,damage,name,key", FOLDER_DAMAGE, ids=[c[0] for c in FOLDER_DAMAGE])
def test_a_damaged_features_folder_is_one_error_naming_the_file_and_key(tmp_path, what, damage, name, key):
    """The issue's cases: each a FileFormatError (and FeaturesError) naming file and key, before use."""
    from jclip.extract import FeaturesError, load_features
    from jclip.file_schema import FileFormatError
    folder = make_extract(str(tmp_path / "f"))
    load_features(folder)                          # valid first
    damage(folder)
    with pytest.raises(FileFormatError) as e:
        load_features(folder)
    assert isinstance(e.value, FeaturesError) and os.path.basename(e.value.path) == name
    assert e.value.key == key and "\n" not in str(e.value)


def test_a_forged_8_gib_shard_header_allocates_nothing(tmp_path):
    """A shard whose header claims 8 GiB, with a record whose hash matches it:
    refused from the header and the file size, in a process limited to 1 GiB."""
    import subprocess
    import sys
    folder = make_extract(str(tmp_path / "f"))
    script = f"""
import hashlib, io, json, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
import numpy as np
from jclip.extract import load_features
from jclip.file_schema import FileFormatError
folder = {folder!r}
buf = io.BytesIO()
np.lib.format.write_array_header_1_0(buf, {{"descr": "<f4", "fortran_order": False, "shape": (1 << 31,)}})
data = buf.getvalue() + b"\\0" * 64
npy = os.path.join(folder, "shard-00000.npy")
open(npy, "wb").write(data)
rec = json.load(open(npy[:-4] + ".json"))
rec["sha256"] = hashlib.sha256(data).hexdigest()
json.dump(rec, open(npy[:-4] + ".json", "w"))
try:
    load_features(folder)
except FileFormatError as e:
    print(e)
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "shard-00000.npy" in r.stdout and "8589934592 bytes" in r.stdout, r.stdout
