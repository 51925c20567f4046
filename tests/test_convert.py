"""convert.py end to end: run as a subprocess in which ``import torch``
fails, downloading from a local HTTP server on 127.0.0.1 (never the
internet)."""
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import jclip  # noqa: F401
from jclip.catalog import prepare_state_dict
from jclip.catalog.sources import URLS_ENV, output_filename
from jclip.weights.checkpoint import read_state_dict, save_state_dict

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
from test_checkpoint import save_torchscript, tiny_archive, tiny_clip  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERT = os.path.join(ROOT, "convert.py")
# Run convert.py with torch made unimportable (sys.modules[...] = None makes
# `import torch` raise ImportError), proving the converter never needs it.
NO_TORCH = (
    "import sys, runpy\n"
    "sys.modules['torch'] = None\n"
    "try:\n    import torch\nexcept ImportError:\n    pass\n"
    "else:\n    sys.exit('torch is importable')\n"
    f"sys.argv = [{CONVERT!r}] + sys.argv[1:]\n"
    f"sys.path.insert(0, {ROOT!r})\n"
    f"runpy.run_path({CONVERT!r}, run_name='__main__')\n")


def run_convert(*args, urls=None, cwd=None):
    env = dict(os.environ)
    env.pop(URLS_ENV, None)
    if urls:
        env[URLS_ENV] = json.dumps(urls)
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)],
                          capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=300)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def listing(*dirs):
    return sorted(f for d in dirs if os.path.isdir(d) for f in os.listdir(d))


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    return tiny_archive(tmp_path_factory, "src", "ViT-B-32.pt", 2, 32)


@pytest.fixture(scope="module")
def official_convnext(tmp_path_factory):
    """An official-named ConvNeXt-V2 checkpoint ({'model': sd}) from timm's
    atto, plus the timm-named original."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    tsd = timm.create_model("convnextv2_atto", pretrained=False).state_dict()
    folder = tmp_path_factory.mktemp("cnx")
    torch.save(tsd, folder / "timm.pt")
    sd, _ = read_state_dict(folder / "timm.pt")
    _, official = prepare_state_dict(sd, "timm.pt")
    torch.save({"model": {k: torch.from_numpy(np.array(v))
                          for k, v in official.items()}},
               folder / "official.pt")
    return folder / "official.pt", folder / "timm.pt", official


# --------------------------------------------------------------- server

class _Handler(http.server.BaseHTTPRequestHandler):
    routes = {}   # path -> (body, mode)
    hits = []

    def do_GET(self):
        self.hits.append(self.path)
        if self.path not in self.routes:
            self.send_error(404)
            return
        body, mode = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":
            # Promise the whole body, send half, hang up.
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.routes, _Handler.hits = {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    def serve(path, body, mode="ok"):
        _Handler.routes[path] = (body, mode)
        return base + path
    serve.hits = _Handler.hits
    yield serve
    httpd.shutdown()
    httpd.server_close()


# ----------------------------------------------------------------- tests

def test_help():
    r = run_convert("--help")
    assert r.returncode == 0, r.stderr
    for flag in ("--models", "--src", "--out-dir", "--out", "--half"):
        assert flag in r.stdout


def test_convert_files_without_torch(tmp_path, vit_file, official_convnext):
    sources = [vit_file, *official_convnext[:2]]
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.jit.load(str(vit_file)).state_dict(), legacy,
               _use_new_zipfile_serialization=False)
    sources.append(legacy)
    for src in sources:
        out = tmp_path / "out" / (src.stem + ".pkl")
        r = run_convert(src, "--out", out)
        assert r.returncode == 0, r.stderr
        got, meta = read_state_dict(out)
        _, want = prepare_state_dict(read_state_dict(src)[0], str(src))
        assert list(got) == list(want)
        for k, v in want.items():
            w = v.astype(np.float32) if v.dtype.kind == "f" else v
            assert got[k].dtype == w.dtype and np.array_equal(got[k], w), k
        assert meta["dtype"] == "float32"
    # timm and official namings give the same weights file content
    a, _ = read_state_dict(tmp_path / "out" / "official.pkl")
    b, _ = read_state_dict(tmp_path / "out" / "timm.pkl")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_half_and_up_to_date(tmp_path, vit_file):
    out = tmp_path / "w.pkl"
    r = run_convert(vit_file, "--out", out, "--half")
    assert r.returncode == 0, r.stderr
    sd, meta = read_state_dict(out)
    assert meta["dtype"] == "float16" and sd["visual.proj"].dtype == np.float16
    stamp = os.stat(out).st_mtime_ns
    r = run_convert(vit_file, "--out", out, "--half")
    assert r.returncode == 0 and "up to date" in r.stdout
    assert os.stat(out).st_mtime_ns == stamp
    r = run_convert(vit_file, "--out", out)          # fp32 now: redo
    assert r.returncode == 0 and "up to date" not in r.stdout
    assert read_state_dict(out)[1]["dtype"] == "float32"


def test_changed_source_is_reconverted(tmp_path):
    model, size = tiny_clip(1, 32, seed=3)
    src = save_torchscript(model, size, tmp_path / "m.pt")
    out = tmp_path / "m.pkl"
    assert run_convert(src, "--out", out).returncode == 0
    first = read_state_dict(out)[0]["visual.proj"]
    model, size = tiny_clip(1, 32, seed=4)
    save_torchscript(model, size, src)
    r = run_convert(src, "--out", out)
    assert r.returncode == 0 and "up to date" not in r.stdout
    assert not np.array_equal(read_state_dict(out)[0]["visual.proj"], first)


def test_corrupt_file_leaves_no_output(tmp_path):
    bad = tmp_path / "RN101.pt"
    bad.write_text("<html><head><title>404 Not Found</title></head></html>")
    out = tmp_path / "out" / "RN101.pkl"
    r = run_convert(bad, "--out", out)
    assert r.returncode == 1
    assert "RN101.pt" in r.stderr and "HTML" in r.stderr
    assert listing(tmp_path / "out") == []


def test_download_verify_convert_then_skip(tmp_path, server, vit_file):
    data = vit_file.read_bytes()
    # A stand-in for OpenAI's file: the mirror entry states its own hash
    # (a bare mirror URL keeps the card's published one, tested below).
    url = {"url": server(f"/{sha256(data)}/ViT-B-32.pt", data), "sha256": sha256(data)}
    src, out = tmp_path / "pretrained", tmp_path / "weights"
    args = ("--models", "ViT-B/32", "--src", src, "--out-dir", out)
    r = run_convert(*args, urls={"ViT-B/32": url})
    assert r.returncode == 0, r.stderr
    assert listing(src) == ["ViT-B-32.pt"] and listing(out) == ["ViT-B-32.safetensors"]
    assert (src / "ViT-B-32.pt").read_bytes() == data
    sd, meta = read_state_dict(out / "ViT-B-32.safetensors")
    assert meta["model"] == "ViT-B/32" and meta["source_sha256"] == sha256(data)
    assert len(server.hits) == 1
    # Up to date: with the original present, and without it (the published
    # hash in the URL matches the recorded one): no second download.
    r = run_convert(*args, urls={"ViT-B/32": url})
    assert r.returncode == 0 and "up to date" in r.stdout, r.stderr
    os.remove(src / "ViT-B-32.pt")
    r = run_convert(*args, urls={"ViT-B/32": url})
    assert r.returncode == 0 and "up to date" in r.stdout, r.stderr
    assert listing(src) == []
    assert len(server.hits) == 1


def test_wrong_checksum_leaves_nothing(tmp_path, server, vit_file):
    url = server("/" + "0" * 64 + "/RN101.pt", vit_file.read_bytes())
    src, out = tmp_path / "pretrained", tmp_path / "weights"
    r = run_convert("--models", "RN101", "--src", src, "--out-dir", out,
                    urls={"RN101": url})
    assert r.returncode == 1
    assert "SHA-256" in r.stderr and "RN101.pt" in r.stderr
    assert listing(src, out) == []


@pytest.mark.parametrize("name", ["ViT-B/32", "convnextv2_base"])
def test_interrupted_download_leaves_nothing(tmp_path, server, vit_file,
                                             name):
    data = vit_file.read_bytes()
    # OpenAI-style URL (hash published) and ConvNeXt-style (none): in both,
    # a short body must be caught.
    path = (f"/{sha256(data)}/x.pt" if name == "ViT-B/32" else "/cnx.pt")
    url = server(path, data, mode="truncate")
    if name == "ViT-B/32":
        url = {"url": url, "sha256": sha256(data)}
    src, out = tmp_path / "pretrained", tmp_path / "weights"
    r = run_convert("--models", name, "--src", src, "--out-dir", out,
                    urls={name: url})
    assert r.returncode == 1
    assert "download" in r.stderr
    assert listing(src, out) == []
    assert not src.exists()         # no empty folder left behind by a failed first download


def test_foreign_original_is_refused_with_the_offline_way(tmp_path, vit_file):
    """An original whose SHA-256 is not OpenAI's is refused, and the message says
    how to convert that very file without a download."""
    src, out = tmp_path / "pretrained", tmp_path / "weights"
    src.mkdir()
    (src / "RN101.pt").write_bytes(vit_file.read_bytes())
    r = run_convert("--models", "RN101", "--src", src, "--out-dir", out, "--no-download")
    assert r.returncode == 1
    assert "SHA-256" in r.stderr and f"python convert.py {src / 'RN101.pt'} --out FILE" in r.stderr


def test_html_error_page_download_refused(tmp_path, server):
    url = server("/cnx.pt", b"<!DOCTYPE html><html>Access Denied</html>")
    src, out = tmp_path / "pretrained", tmp_path / "weights"
    r = run_convert("--models", "convnextv2_base", "--src", src,
                    "--out-dir", out, urls={"convnextv2_base": url})
    assert r.returncode == 1 and "HTML" in r.stderr
    assert listing(src, out) == []


def test_convnext_download_records_computed_hash(tmp_path, server,
                                                 official_convnext):
    data = official_convnext[0].read_bytes()
    url = server("/convnextv2_base_1k_224_ema.pt", data)
    src, out = tmp_path / "pretrained", tmp_path / "weights"
    args = ("--models", "convnextv2_base", "--src", src, "--out-dir", out)
    r = run_convert(*args, urls={"convnextv2_base": url})
    assert r.returncode == 0, r.stderr
    weights = out / output_filename("convnextv2_base")
    assert weights.name == "convnextv2_base_1k_224_ema.safetensors"
    sd, meta = read_state_dict(weights)
    assert meta["source_sha256"] == sha256(data)
    assert meta["architecture"] == "convnextv2"
    os.remove(src / "convnextv2_base_1k_224_ema.pt")
    r = run_convert(*args, urls={"convnextv2_base": url})
    assert r.returncode == 0 and "up to date" in r.stdout
    assert len(server.hits) == 1


def test_one_failure_does_not_stop_the_others(tmp_path, server, vit_file):
    data = vit_file.read_bytes()
    good = {"url": server(f"/{sha256(data)}/ViT-B-32.pt", data), "sha256": sha256(data)}
    bad = server("/" + "1" * 64 + "/RN101.pt", data)
    src, out = tmp_path / "pretrained", tmp_path / "weights"
    r = run_convert("--models", "RN101", "ViT-B/32", "--src", src,
                    "--out-dir", out, urls={"ViT-B/32": good, "RN101": bad})
    assert r.returncode == 1 and "RN101" in r.stderr
    assert "failed (1): RN101" in r.stderr
    assert listing(out) == ["ViT-B-32.safetensors"]


def test_reconvert_jclip_file_to_half(tmp_path, vit_file):
    # Converting a jclip .pkl again (e.g. to fp16) works and keeps the model.
    first = tmp_path / "a.pkl"
    assert run_convert(vit_file, "--out", first, "--name", "tiny") \
        .returncode == 0
    second = tmp_path / "b.pkl"
    r = run_convert(first, "--out", second, "--half")
    assert r.returncode == 0, r.stderr
    sd, meta = read_state_dict(second)
    assert meta["dtype"] == "float16" and meta["source_format"] == "jclip"
    assert meta["model"] == "tiny"


def test_unknown_architecture_pkl_refused(tmp_path):
    save_state_dict(tmp_path / "odd.pkl", {"w": np.ones(3)}, {})
    r = run_convert(tmp_path / "odd.pkl", "--out", tmp_path / "o.pkl")
    assert r.returncode == 1 and "unknown architecture" in r.stderr
    assert not (tmp_path / "o.pkl").exists()


@pytest.mark.parametrize("path", ["/mirror/RN101.pt",
                                  "/" + "2" * 64 + "/RN101.pt"])
def test_mirror_url_keeps_published_hash(tmp_path, server, vit_file, path):
    # A mirror URL (with no hash, or another hash in it) for an OpenAI model
    # is still checked against OpenAI's published SHA-256.
    url = server(path, vit_file.read_bytes())
    src, out = tmp_path / "pretrained", tmp_path / "weights"
    r = run_convert("--models", "RN101", "--src", src, "--out-dir", out,
                    urls={"RN101": url})
    assert r.returncode == 1
    assert "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599" in r.stderr
    assert listing(src, out) == []


def test_default_output_is_safetensors_and_format_pkl(tmp_path, vit_file):
    from safetensors.numpy import load_file
    r = run_convert(vit_file, "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    st = tmp_path / "ViT-B-32.safetensors"
    assert listing(tmp_path) == ["ViT-B-32.safetensors"]
    sd, meta = read_state_dict(st)
    assert meta["format"] == "jclip" and meta["architecture"] == "clip"
    # The package's own reader gives the same arrays; no pickle inside.
    ref = load_file(str(st))
    assert sorted(ref) == sorted(sd)
    assert all(np.array_equal(ref[k], sd[k]) and ref[k].dtype == sd[k].dtype for k in sd)
    # --format pkl, and an --out ending in .pkl, give Jittor's format.
    r = run_convert(vit_file, "--out-dir", tmp_path, "--format", "pkl")
    assert r.returncode == 0, r.stderr
    r = run_convert(vit_file, "--out", tmp_path / "x.pkl")
    assert r.returncode == 0, r.stderr
    for name in ("ViT-B-32.pkl", "x.pkl"):
        assert (tmp_path / name).read_bytes()[-8:] == b"HCAJSLHD"
        got, m = read_state_dict(tmp_path / name)
        assert m["format"] == "jclip" and list(got) == list(sd)
        assert all(np.array_equal(got[k], sd[k]) for k in sd)
