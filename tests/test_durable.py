"""Durable writes under faults: a full disk (RLIMIT_FSIZE, SIGXFSZ ignored so a
write fails with EFBIG), bytes lost after a write, and a SIGKILL at each
atomic write (jclip/io.py's JCLIP_KILL_AT_WRITE hook).  Afterwards the
previous outputs still work and a rerun completes.

Here, fast: jclip.io itself, extract's shard writer, and train.sh's swap
(manifest.begin/commit) killed at every one of its writes.  The real
commands (train.sh killed at every write it makes; train.sh, test.sh,
jclip.extract and convert.py on a full disk) are tests/test_fault_injection.py.
"""
import json
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def full_disk(limit):
    """preexec_fn: files of at most ``limit`` bytes; a longer write fails with EFBIG."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run(cmd, env=None, limit=None, timeout=600):
    env = dict(os.environ, log_silent="1", PYTHON=PY, **(env or {}))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=full_disk(limit) if limit is not None else None)


def one_error_line(r):
    """A failed run: exit 1 and one ``error: ...`` line, no traceback."""
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr[-2000:]


def debris(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.startswith(".tmp-")]


# --------------------------------------------------------------------------
# jclip.io
# --------------------------------------------------------------------------

WRITER = """
import sys
import numpy as np
from jclip.io import atomic_save_npz, atomic_write_text
folder = sys.argv[1]
atomic_write_text(folder + "/a.txt", "new a\\n")
atomic_save_npz(folder + "/b.npz", {"x": np.arange(50000.0)})
atomic_write_text(folder + "/c.txt", "new c\\n")
"""


def _old_files(folder):
    (folder / "a.txt").write_text("old a\n")
    np.savez(folder / "b.npz", x=np.zeros(3))
    (folder / "c.txt").write_text("old c\n")


def test_a_full_disk_fails_the_write_and_keeps_the_old_file(tmp_path):
    _old_files(tmp_path)
    r = run([PY, "-c", WRITER, str(tmp_path)], limit=100_000)     # a.txt fits, b.npz (400 kB) does not
    assert r.returncode != 0 and "File too large" in r.stderr
    assert (tmp_path / "a.txt").read_text() == "new a\n"
    np.testing.assert_array_equal(np.load(tmp_path / "b.npz")["x"], np.zeros(3))
    assert (tmp_path / "c.txt").read_text() == "old c\n" and not debris(tmp_path)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sigkill_at_write_k_leaves_the_earlier_writes_and_the_old_files(tmp_path, k):
    _old_files(tmp_path)
    r = run([PY, "-c", WRITER, str(tmp_path)], env={"JCLIP_KILL_AT_WRITE": str(k)})
    assert r.returncode == -signal.SIGKILL
    assert (tmp_path / "a.txt").read_text() == ("new a\n" if k > 1 else "old a\n")
    assert len(np.load(tmp_path / "b.npz")["x"]) == (50000 if k > 2 else 3)
    assert (tmp_path / "c.txt").read_text() == "old c\n"
    assert len(debris(tmp_path)) == 1               # the complete temporary the kill left ...
    from jclip.io import atomic_write_text
    atomic_write_text(str(tmp_path / "d.txt"), "x")  # ... is removed by the next write there
    assert not debris(tmp_path)


def test_the_write_log_counts_every_atomic_write(tmp_path):
    log = tmp_path / "log"
    r = run([PY, "-c", WRITER, str(tmp_path)], env={"JCLIP_WRITE_LOG": str(log)})
    assert r.returncode == 0, r.stderr
    lines = [line.split(" ", 2) for line in log.read_text().splitlines()]
    assert [(n, os.path.basename(p)) for _, n, p in lines] == [("1", "a.txt"), ("2", "b.npz"), ("3", "c.txt")]


def test_bytes_lost_after_the_write_are_caught_before_the_rename(tmp_path, monkeypatch):
    """A file system that acknowledges a write and loses part of it (as a
    full disk can, at writeback): the read-back check refuses it."""
    import jclip.io as jio
    target = tmp_path / "t.txt"
    target.write_text("old\n")
    real = os.fsync

    def losing(fd):
        os.ftruncate(fd, 3)
        real(fd)
    monkeypatch.setattr(jio.os, "fsync", losing)
    with pytest.raises(jio.WriteCheckError, match="t.txt: the file read back differs"):
        jio.atomic_write_text(str(target), "a longer new text\n")
    with pytest.raises(jio.WriteCheckError, match="n.npz"):
        jio.atomic_save_npz(str(tmp_path / "n.npz"), {"x": np.arange(1000.0)})
    monkeypatch.setattr(jio.os, "fsync", real)
    assert target.read_text() == "old\n" and not (tmp_path / "n.npz").exists() and not debris(tmp_path)


def test_a_shard_that_did_not_reach_the_disk_whole_gets_no_record(tmp_path, monkeypatch):
    """The issue's case: a truncated shard whose record hash matches it.  The
    record is written only after the array read back equal; a rerun encodes
    the shard again."""
    import jclip.io as jio
    from jclip import extract
    folder = str(tmp_path)
    feats = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    real = os.fsync

    def losing(fd):
        if os.fstat(fd).st_size > 500:       # the shard's array, not its record
            os.ftruncate(fd, os.fstat(fd).st_size - 64)
        real(fd)
    monkeypatch.setattr(jio.os, "fsync", losing)
    with pytest.raises(OSError, match="shard-00000.npy"):
        extract._write_shard(folder, 0, 0, feats, {})
    monkeypatch.setattr(jio.os, "fsync", real)
    assert sorted(os.listdir(folder)) == []
    extract._write_shard(folder, 0, 0, feats, {})
    index = {"dtype": "float32", "dim": 16}
    np.testing.assert_array_equal(extract.read_shard(folder, 0, 0, 8, index), feats)


# --------------------------------------------------------------------------
# train.sh's swap: manifest.begin / commit, killed at every write
# --------------------------------------------------------------------------

SWAP = """
import os, sys
from jclip.pipeline import manifest
from jclip.pipeline.config import load_config
folder, tag = sys.argv[1], sys.argv[2]
cfg = load_config(None, [f"out_dir={folder}/out", f"lpp.epochs={10 if tag == 'old' else 11}"])
staging = manifest.begin(cfg)
outputs = {}
for name in ("lpp_rn", "lpp_vit", "dog_head"):
    path = os.path.join(staging, name + ".bin")
    open(path, "w").write(name + " " + tag)
    outputs[name] = manifest.output_entry(path)
open(os.path.join(staging, "val_dogs.txt"), "w").write(tag)
m = {"config": cfg.to_dict(), "config_file": cfg.path, "device": "cpu",
     "train_4shot": manifest.output_entry(os.path.join(folder, "shots.txt")),
     "val": {"path": "val.txt", "sha256": None},
     "backbones": {k: {"model": k, "weights": k, "source_sha256": "a" * 64} for k in ("rn", "vit")},
     "outputs": outputs}
m["backbones"]["dog"] = {"model": "cnx", "weights": "cnx", "sha256": "b" * 64}
manifest.commit(cfg, m, staging)
"""


def _trained_state(folder):
    """'old' or 'new': which run's heads the current manifest lists (each
    checked as test.sh checks them), or the error test.sh would give."""
    from jclip.pipeline import manifest
    from jclip.pipeline.config import load_config
    for tag, epochs in (("old", 10), ("new", 11)):
        cfg = load_config(None, [f"out_dir={folder}/out", f"lpp.epochs={epochs}"])
        try:
            m = manifest.read(cfg)
        except ValueError as e:
            last = str(e)
            continue
        assert {open(e["path"]).read() for e in m["outputs"].values()} == \
            {f"{n} {tag}" for n in ("lpp_rn", "lpp_vit", "dog_head")}
        return tag
    return last


def test_the_swap_killed_at_every_write_leaves_a_usable_manifest(tmp_path):
    (tmp_path / "shots.txt").write_text("a.jpg 0\n")
    assert run([PY, "-c", SWAP, str(tmp_path), "old"]).returncode == 0
    log = tmp_path / "log"
    (tmp_path / "count").mkdir()
    (tmp_path / "count" / "shots.txt").write_text("a.jpg 0\n")
    assert run([PY, "-c", SWAP, str(tmp_path / "count"), "new"], env={"JCLIP_WRITE_LOG": str(log)}).returncode == 0
    writes = max(int(line.split()[1]) for line in log.read_text().splitlines())
    assert writes == 6      # manifest (staged names), 4 installs, manifest (final names)
    states = []
    for k in range(1, writes + 1):
        r = run([PY, "-c", SWAP, str(tmp_path), "new"], env={"JCLIP_KILL_AT_WRITE": str(k)})
        assert r.returncode == -signal.SIGKILL, r.stderr
        states.append(_trained_state(str(tmp_path)))
        # the previous state back for the next kill
        assert run([PY, "-c", SWAP, str(tmp_path), "old"]).returncode == 0
        assert _trained_state(str(tmp_path)) == "old"
    assert states == ["old"] + ["new"] * (writes - 1), states
    # finished: the heads under their usual names, no staging folder, no temporaries
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["dog_head.bin", "lpp_rn.bin", "lpp_vit.bin", "manifest.json", "val_dogs.txt"]


FORK_SCRIPT = r"""
import os, signal, sys, time
from jclip import io
path = sys.argv[1]
with io.atomic_open(path, "w") as f:          # the handlers are ours now, and a temporary is live
    f.write("parent's bytes")
    assert signal.getsignal(signal.SIGTERM) is io._on_signal
    r, w = os.pipe()
    pid = os.fork()                             # as Jittor's compiler pool does at `import jittor`
    if pid == 0:
        clean = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and not io._live
        os.write(w, b"1" if clean else b"0")
        time.sleep(60)
        os._exit(3)
    child_clean = os.read(r, 1) == b"1"
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    live = [p for p in io._live if os.path.exists(p)]
print(child_clean, os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, len(live))
"""


def test_a_forked_child_dies_of_sigterm_and_leaves_the_parents_temporaries(tmp_path):
    # Jittor's compiler pool forks at import; its workers once inherited
    # jclip's SIGTERM handler, survived Pool.terminate and hung the exit of
    # every process that imported jittor after an atomic write
    out = tmp_path / "f.txt"
    r = subprocess.run([PY, "-c", FORK_SCRIPT, str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "1"], r.stdout
    assert out.read_text() == "parent's bytes"


def test_a_moved_out_folder_uses_its_own_heads_and_an_old_manifest_still_reads(tmp_path):
    """The manifest names the heads relative to its folder: a copy of out/
    (another machine, a renamed folder) is checked against and loads its own
    files, not the original's; a manifest written before (absolute paths, no
    marker) reads as it did."""
    import shutil
    from jclip.pipeline import manifest
    from jclip.pipeline.config import load_config
    (tmp_path / "shots.txt").write_text("a.jpg 0\n")
    assert run([PY, "-c", SWAP, str(tmp_path), "old"]).returncode == 0
    stored = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert stored["outputs_relative_to_manifest"] is True
    assert {e["path"] for e in stored["outputs"].values()} == {"lpp_rn.bin", "lpp_vit.bin", "dog_head.bin"}
    shutil.copytree(tmp_path / "out", tmp_path / "copy")
    (tmp_path / "out" / "lpp_rn.bin").write_text("replaced in the original")
    cfg = load_config(None, [f"out_dir={tmp_path}/copy", "lpp.epochs=10"])
    m = manifest.read(cfg)
    assert {e["path"] for e in m["outputs"].values()} == {
        str(tmp_path / "copy" / n) for n in ("lpp_rn.bin", "lpp_vit.bin", "dog_head.bin")}
    with pytest.raises(ValueError, match="lpp_rn.bin: not the lpp_rn head"):
        manifest.read(load_config(None, [f"out_dir={tmp_path}/out", "lpp.epochs=10"]))
    # the form written before: absolute paths, no marker
    old = json.loads(json.dumps(stored))
    del old["outputs_relative_to_manifest"]
    for entry in old["outputs"].values():
        entry["path"] = str(tmp_path / "copy" / entry["path"])
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(old))
    m = manifest.read(load_config(None, [f"out_dir={tmp_path}/old", "lpp.epochs=10"]))
    assert m["outputs"]["lpp_rn"]["path"] == str(tmp_path / "copy" / "lpp_rn.bin")
