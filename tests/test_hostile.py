"""Hostile and broken files (issue 13): every case builds its file here.

Loads run in a subprocess under RLIMIT_AS = 1 GiB that imports only the
torch-free reader: each must end with jclip's CheckpointError naming the file
(never a MemoryError, a kill or a segfault), quickly.
"""
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

import jclip  # noqa: F401
from jclip.io import atomic_write_text
from jclip.weights.checkpoint import CheckpointError, read_state_dict, save_state_dict

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1 << 30

# The jail: 1 GiB of address space (the bare import needs ~130 MB), then
# read_state_dict on each path; one JSON line per file.
JAIL = textwrap.dedent(f"""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, ({GIB}, {GIB}))
    sys.path.insert(0, {ROOT!r})
    sys.modules["torch"] = None
    from jclip.weights.checkpoint import CheckpointError, read_state_dict
    for path in sys.argv[1:]:
        t = time.perf_counter()
        try:
            sd, meta = read_state_dict(path)
            out = {{"ok": True, "keys": list(sd)}}
        except CheckpointError as e:
            out = {{"ok": False, "error": str(e)}}
        except BaseException as e:
            out = {{"ok": False, "escaped": type(e).__name__, "error": str(e)[:300]}}
        out["seconds"] = time.perf_counter() - t
        print(json.dumps(out), flush=True)
""")


def jail(*paths, timeout=120):
    # under sh: a crash shows as exit status 128+N (see spawn)
    r = subprocess.run(["sh", "-c", '"$0" "$@"; exit $?', sys.executable, "-c", JAIL,
                        *map(str, paths)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"reader crashed (rc {r.returncode}): {r.stderr[-2000:]}"
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(results) == len(paths), r.stderr[-2000:]
    return results


def assert_refused(path, *words, max_seconds=1.0):
    """path ends in one CheckpointError naming it (and ``words``), fast."""
    (res,) = jail(path)
    assert not res["ok"] and "escaped" not in res, res
    assert str(path) in res["error"], res
    for w in words:
        assert w.lower() in res["error"].lower(), (w, res)
    assert res["seconds"] < max_seconds, res
    return res["error"]


# ------------------------------------------------------------ file builders

class _Reduce:
    """Pickles as ``func(*args)`` (+ BUILD state): forges any record."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else \
            (self.func, self.args, self.state)


def forged_dtype(fields, itemsize, flags=0):
    """A structured numpy dtype as its pickle describes it, with any fields
    and flags (the object flag 0x01/hasobject cleared)."""
    names = tuple(fields)
    return _Reduce(np.dtype, (f"V{itemsize}", False, True),
                   (3, "|", None, names, {n: fields[n] for n in names}, itemsize, 1, flags))


def forged_array(dtype, shape, raw):
    from numpy.core.multiarray import _reconstruct
    return _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, shape, dtype, False, raw))


def write_pkl(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


class _Storage:
    def __init__(self, key, numel, stype=None):
        self.key, self.numel, self.stype = key, numel, stype or torch.FloatStorage


def torch_pickle(obj, protocol=2):
    """Pickle ``obj`` as torch would, with _Storage objects as persistent ids."""
    buf = io.BytesIO()

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                return ("storage", o.stype, o.key, "cpu", o.numel)
            return None
    P(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def tensor(storage, offset, shape, stride):
    return _Reduce(torch._utils._rebuild_tensor_v2,
                   (storage, offset, shape, stride, False, OrderedDict()))


def torch_zip(path, obj, storages, byteorder=b"little", compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compress) as z:
        z.writestr("archive/data.pkl", torch_pickle(obj))
        z.writestr("archive/byteorder", byteorder)
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
    return path


def legacy_file(path, state_dict):
    torch.save(state_dict, path, _use_new_zipfile_serialization=False)
    return path


# ------------------------------------------------ 1. memory-unsafe "safe" load

@pytest.mark.parametrize("case", ["object-flag-cleared", "field-past-itemsize",
                                  "subarray", "object-dtype"])
def test_forged_dtype_refused(tmp_path, case):
    raw = b"\x41" * 32
    if case == "object-flag-cleared":
        dt = forged_dtype({"a": (np.dtype("f8"), 0), "p": (np.dtype("O"), 8)}, 16)
    elif case == "field-past-itemsize":
        dt = forged_dtype({"a": (np.dtype("f8"), 1 << 20)}, 16)
    elif case == "subarray":
        dt = _Reduce(np.dtype, ("V16", False, True),
                     (3, "|", (np.dtype("f4"), (4,)), None, None, 16, 4, 0))
    else:
        dt = _Reduce(np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 63))
    path = write_pkl(tmp_path / f"{case}.pkl",
                     {"token_embedding.weight": forged_array(dt, (2,), raw)})
    assert_refused(path, "dtype")
    # convert.py does not re-emit it as a clean-looking file
    out = tmp_path / "out.safetensors"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), str(path),
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and str(path) in r.stderr and not out.exists()


def test_pkl_arrays_rebuilt_from_plain_bytes(tmp_path):
    # An honest jittor-style .pkl: every plain dtype, both byte orders, a
    # Fortran-ordered array and a scalar come back exactly.
    arrays = {f"{d}{o}": np.arange(6, dtype=np.dtype(d).newbyteorder(o)).reshape(2, 3)
              for d in ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")
              for o in "<>"}
    arrays["bool"] = np.array([True, False])
    arrays["fortran"] = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    path = write_pkl(tmp_path / "honest.pkl", arrays)
    sd, _ = read_state_dict(path)
    for k, v in arrays.items():
        assert sd[k].dtype == v.dtype and np.array_equal(sd[k], v), k
        assert sd[k].flags.writeable
    # Repeating one array's bytes a million times (memo references) is refused.
    raw = np.zeros(1 << 16, np.float32)
    path = write_pkl(tmp_path / "memo.pkl", {f"w{i}": raw for i in range(3)})
    read_state_dict(path)                              # shared object: counted once
    blob = b"\0" * (1 << 20)
    many = {f"w{i}": forged_array(_Reduce(np.dtype, ("f4", False, True)), (1 << 18,), blob)
            for i in range(2000)}
    assert_refused(write_pkl(tmp_path / "amplify.pkl", many), "more than the file")


def test_planted_marker_never_appears(tmp_path):
    marker = tmp_path / "marker"
    payloads = {
        "reduce.pkl": _Reduce(os.system, (f"touch {marker}",)),
        "reconstruct.pkl": _Reduce(np.core.multiarray._reconstruct,
                                   (_Reduce(os.system, (f"touch {marker}",)), (0,), b"b")),
        "scalar.pkl": _Reduce(np.core.multiarray.scalar,
                              (_Reduce(np.dtype, ("O8", False, True)), b"\0" * 8)),
    }
    paths = [write_pkl(tmp_path / name, {"w": obj}) for name, obj in payloads.items()]
    zpath = torch_zip(tmp_path / "sys.pt", {"w": _Reduce(os.system, (f"touch {marker}",))}, {})
    for res, path in zip(jail(*paths, zpath), [*paths, zpath]):
        assert not res["ok"] and "escaped" not in res and str(path) in res["error"], res
    assert not marker.exists()


# ------------------------------------------------------- 2. size amplification

def test_stride0_view_of_2_40_elements(tmp_path):
    path = tmp_path / "stride0.pt"
    torch.save({"w": torch.zeros(1).expand(1 << 40)}, path)
    assert os.path.getsize(path) < 2000
    assert_refused(path, "more than the file")


def test_legacy_storage_declaring_12_gib(tmp_path):
    path = legacy_file(tmp_path / "huge.pt", {"w": torch.zeros(4)})
    data = bytearray(path.read_bytes())
    # the last storage: 8-byte element count, then 4 float32s
    struct.pack_into("<q", data, len(data) - 16 - 8, 3 << 30)
    path.write_bytes(data)
    assert os.path.getsize(path) < 1000
    assert_refused(path, "bytes are left")


def test_zip_bomb_is_not_decompressed(tmp_path):
    numel = 32 << 20                       # 128 MiB of zeros -> ~130 KB deflated
    path = torch_zip(tmp_path / "bomb.pt", {"w": tensor(_Storage("0", numel), 0, (numel,), (1,))},
                     {"0": bytes(numel * 4)}, compress=zipfile.ZIP_DEFLATED)
    assert os.path.getsize(path) < (1 << 20)
    assert_refused(path, "more than the file")
    # a bomb in TorchScript code/ is bounded the same way
    path = tmp_path / "codebomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", torch_pickle({}))
        z.writestr("archive/code/__torch__.py", b"#" * (200 << 20))
    assert_refused(path)


# ----------------------------------------------------- 3. malformed records

MALFORMED_TENSORS = {
    "negative-dim": ((-4,), (1,), 0),
    "float-dim": ((2.5,), (1,), 0),
    "string-dim": (("4",), (1,), 0),
    "negative-stride": ((4,), (-1,), 3),
    "negative-offset": ((2,), (1,), -1),
    "rank-mismatch": ((2, 2), (1,), 0),
    "past-storage": ((8,), (1,), 0),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_TENSORS))
def test_malformed_tensor_records(tmp_path, case):
    shape, stride, offset = MALFORMED_TENSORS[case]
    path = torch_zip(tmp_path / f"{case}.pt", {"w": tensor(_Storage("0", 4), offset, shape, stride)},
                     {"0": bytes(16)})
    assert_refused(path)


def test_malformed_containers(tmp_path):
    ok = {"w": tensor(_Storage("0", 4), 0, (4,), (1,))}
    bad_order = torch_zip(tmp_path / "byteorder.pt", ok, {"0": bytes(16)}, byteorder=b"\xff\xfe")
    deep = b"\x80\x04" + b"]" * 50000 + b"a" * 49999 + b"."
    deep_pkl = tmp_path / "deep.pkl"
    deep_pkl.write_bytes(deep)
    deep_zip = tmp_path / "deep.pt"
    with zipfile.ZipFile(deep_zip, "w") as z:
        z.writestr("archive/data.pkl", deep)
    legacy = legacy_file(tmp_path / "neg.pt", {"w": torch.zeros(4)})
    data = bytearray(legacy.read_bytes())
    struct.pack_into("<q", data, len(data) - 24, -5)
    neg = tmp_path / "negative-size.pt"
    neg.write_bytes(data)
    # the storage key list replaced by a number
    raw = legacy.read_bytes()
    f = io.BytesIO(raw)
    for _ in range(4):
        pickle.load(f) if _ < 3 else _skip_torch_pickle(f)
    keys_at = f.tell()
    pickle.load(f)
    notlist = tmp_path / "keys-not-list.pt"
    notlist.write_bytes(raw[:keys_at] + pickle.dumps(42, protocol=2) + raw[f.tell():])
    paths = [bad_order, deep_pkl, deep_zip, neg, notlist]
    for res, path in zip(jail(*paths), paths):
        assert not res["ok"] and "escaped" not in res, (path, res)
        assert str(path) in res["error"] and res["seconds"] < 1.0, res


def _skip_torch_pickle(f):
    class U(pickle.Unpickler):
        def persistent_load(self, pid):
            return None

        def find_class(self, module, name):
            return lambda *a, **k: None
    U(f).load()


# ---------------------------------------------------------------- 4. NaN/Inf

@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_weights_named(tmp_path, bad):
    w = torch.ones(3, 4)
    w[1, 2] = float(bad)
    src = tmp_path / "nan.pt"
    torch.save({"good": torch.ones(2), "visual.proj": w}, src)
    with pytest.raises(CheckpointError, match=r"nan\.pt.*'visual\.proj'"):
        read_state_dict(src)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), str(src),
                        "--out", str(tmp_path / "o.safetensors")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "visual.proj" in r.stderr
    assert not (tmp_path / "o.safetensors").exists()
    # jclip's own writer refuses them too, and a float16 overflow
    with pytest.raises(ValueError, match="visual.proj"):
        save_state_dict(tmp_path / "w.safetensors", {"visual.proj": w.numpy()}, {})
    with pytest.raises(ValueError, match="overflow float16"):
        save_state_dict(tmp_path / "w.safetensors", {"big": np.full(2, 1e6, np.float32)}, {},
                        dtype="float16")
    assert os.listdir(tmp_path) == ["nan.pt"]


def test_attention_mask_may_hold_minus_inf(tmp_path):
    mask = np.triu(np.full((3, 3), -np.inf, np.float32), 1)
    save_state_dict(tmp_path / "m.safetensors", {"attn_mask": mask}, {})
    np.testing.assert_array_equal(read_state_dict(tmp_path / "m.safetensors")[0]["attn_mask"], mask)


# ------------------------------------------------------------- 5. signals

WRITER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from jclip.io import atomic_open
    with atomic_open(sys.argv[1]) as f:
        f.write(b"x" * 1000)
        f.flush()
        print("writing", os.getpid(), flush=True)
        time.sleep(60)
""")


def spawn(script, *args, **kw):
    """Run ``python -c script`` under ``sh``, which reports a death by signal
    N as exit status 128+N: a Jittor imported by an earlier test into this
    process quits on a SIGCHLD from a child killed by a signal."""
    return subprocess.Popen(["sh", "-c", '"$0" "$@"; exit $?', sys.executable, "-c", script,
                             *map(str, args)], **kw)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_write_leaves_no_debris(tmp_path, sig):
    target = tmp_path / "out" / "w.safetensors"
    p = spawn(WRITER.format(root=ROOT), target, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE, text=True)
    said, pid = p.stdout.readline().split()
    assert said == "writing"
    assert len(os.listdir(target.parent)) == 1          # the temporary exists
    os.kill(int(pid), sig)
    p.wait(timeout=30)
    assert p.returncode == 128 + sig
    assert os.listdir(target.parent) == []


def test_stale_temporary_of_dead_process_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".tmp-{dead}-abc"
    live = tmp_path / f".tmp-{os.getppid()}-def"        # a live process: kept
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"y")
    atomic_write_text(tmp_path / "a.txt", "hi")
    assert sorted(os.listdir(tmp_path)) == sorted(["a.txt", live.name])


# ----------------------------------------------------------- 6. downloads

class _Slow:
    """HTTP server: mode "stall" sends headers and 10 bytes then nothing;
    "trickle" one byte every 0.1 s; "range" honours Range requests."""

    def __init__(self, body, mode):
        import http.server
        outer = self
        self.body, self.mode, self.ranges = body, mode, []

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng[6:-1]) if rng and outer.mode == "range" else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(outer.body) - 1}/{len(outer.body)}")
                self.send_header("Content-Length", str(len(outer.body) - start))
                self.end_headers()
                try:
                    if outer.mode == "stall":
                        self.wfile.write(outer.body[:10])
                        self.wfile.flush()
                        time.sleep(5)
                    elif outer.mode == "trickle":
                        for b in outer.body:
                            self.wfile.write(bytes([b]))
                            self.wfile.flush()
                            time.sleep(0.1)
                    else:
                        self.wfile.write(outer.body[start:])
                except OSError:
                    pass

            def log_message(self, *a):
                pass
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/f.pt"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("mode,words", [("stall", "stalled"), ("trickle", "took more than")])
def test_download_limits(tmp_path, mode, words):
    from jclip.weights.download import DownloadError, download
    srv = _Slow(b"z" * 200, mode)
    try:
        t = time.monotonic()
        with pytest.raises(DownloadError, match=words):
            download(srv.url, tmp_path / "f.pt", progress=False, timeout=1, max_time=1)
        assert time.monotonic() - t < 4
    finally:
        srv.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mode", ["range", "plain"])
def test_stale_part_resumed_or_restarted(tmp_path, mode):
    import hashlib
    from jclip.weights.download import download
    body = os.urandom(5000)
    (tmp_path / "f.pt.part").write_bytes(body[:2000])   # left by a killed process
    srv = _Slow(body, mode)
    try:
        digest = download(srv.url, tmp_path / "f.pt", progress=False,
                          sha256=hashlib.sha256(body).hexdigest())
    finally:
        srv.close()
    assert srv.ranges == ["bytes=2000-"]
    assert (tmp_path / "f.pt").read_bytes() == body and digest == hashlib.sha256(body).hexdigest()
    assert os.listdir(tmp_path) == ["f.pt"]


DOWNLOADER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from jclip.weights.download import download
    print(os.getpid(), flush=True)
    download(sys.argv[1], sys.argv[2], progress=False, timeout=30)
""")


def test_sigterm_mid_download_removes_part(tmp_path):
    srv = _Slow(b"z" * 200, "stall")
    try:
        p = spawn(DOWNLOADER.format(root=ROOT), srv.url, tmp_path / "f.pt",
                  stdout=subprocess.PIPE, text=True)
        pid = int(p.stdout.readline())
        part = tmp_path / "f.pt.part"
        deadline = time.monotonic() + 30
        while not part.exists():
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)                  # inside the 5 s stall
        assert p.poll() is None
        os.kill(pid, signal.SIGTERM)
        p.wait(timeout=30)
    finally:
        srv.close()
    assert p.returncode == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []
