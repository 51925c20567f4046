"""open_clip files through huggingface_hub, against a loopback hub (the
endpoints the library calls: HEAD/GET /{repo}/resolve/{rev}/{file} answering
302 to a CDN on another port, with X-Repo-Commit, X-Linked-Etag and
X-Linked-Size) and a Hugging Face cache laid out by hand as the library lays
it out.  huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE / HF_HOME and
HF_HUB_OFFLINE when it is imported, so every case runs convert.py (or a small
script) in a subprocess with its own environment; torch is blocked there.
The model is a small open_clip ViT-B-32 added to the catalogue in that
process only (an architecture file and a card with its own hub repository),
so the converted state dict is exactly its card's."""
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading

import pytest

from jclip.catalog import from_open_clip_config
from jclip.weights.checkpoint import read_meta

pytest.importorskip("huggingface_hub")
pytest.importorskip("torch")
pytest.importorskip("open_clip")
from test_open_clip import build_open_clip, save_like_the_hub, scaled  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = "ViT-B-32-tiny"
NAME = f"{ARCH}/loopback"
REPO = "jclip-test/tiny-vit"
STEM = "ViT-B-32-tiny-loopback"           # the card's weights file stem
TINY_CFG = scaled("ViT-B-32", image_size=64)
# convert.py's main with torch blocked and the tiny model added to this process's catalogue.
RUNNER = (
    "import json, sys\n"
    "sys.modules['torch'] = None\n"
    f"sys.path.insert(0, {ROOT!r})\n"
    "from jclip.catalog import add_model_config\n"
    "add_model_config(sys.argv[1])\n"
    "add_model_config(json.loads(sys.argv[2]))\n"
    "from jclip.weights.convert_cli import main\n"
    "sys.exit(main(sys.argv[3:]))\n")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SAFETENSORS, BIN = "open_clip_model.safetensors", "open_clip_pytorch_model.bin"
MiB = 1 << 20


def sha256(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{file name: bytes} of a small open_clip ViT-B-32, saved as the hub saves it."""
    paths = save_like_the_hub(build_open_clip(TINY_CFG), str(tmp_path_factory.mktemp("tiny")))
    return {os.path.basename(p): open(p, "rb").read() for p in paths}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """(architecture file, card JSON) RUNNER adds: the tiny ViT and its card."""
    arch = tmp_path_factory.mktemp("catalogue") / f"{ARCH}.json"
    arch.write_text(json.dumps(TINY_CFG))
    with open(os.path.join(ROOT, "jclip", "catalog", "open_clip.json")) as f:
        defaults = json.load(f)["defaults"]
    return str(arch), json.dumps({"defaults": defaults, "models": {NAME: {"arch": ARCH, "hub": REPO}}})


# ------------------------------------------------------------ loopback hub

class Hub:
    """The hub (resolve URLs) and its CDN (the bytes), on two ports, as
    huggingface.co: the CDN is another origin, so the library reads the
    metadata off the hub's 302.  ``files[(repo, name)]`` = dict(body=...,
    oid=published etag (default: the body's SHA-256), size=announced size,
    stream=bytes the CDN really sends instead of the body (with no
    Content-Length), status=the CDN's status and error_body).  ``token``:
    when set, the hub answers 401 to requests without it."""

    def __init__(self):
        self.files, self.token, self.hits, self.cdn_sent = {}, None, [], {}
        hub, cdn = self, None

        class Resolve(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                hub.hits.append((self.command, self.path))
                m = re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", self.path)
                if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self.send_response(401)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                f = hub.files.get((m.group(1), m.group(3))) if m else None
                if f is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(302)
                self.send_header("Location", f"{cdn.url}/blob/{m.group(1)}/{m.group(3)}")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"a9c4e1d2b3f4a9c4e1d2b3f4a9c4e1d2b3f4a9c4"')   # the pointer's git sha
                self.send_header("X-Linked-Etag", f'"{f.get("oid", sha256(f["body"]))}"')
                self.send_header("X-Linked-Size", str(f.get("size", len(f["body"]))))
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD

            def log_message(self, *a):
                pass

        class Cdn(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hub.hits.append(("CDN " + self.command, self.path))
                repo, name = self.path[len("/blob/"):].rsplit("/", 1)
                f = hub.files[(repo, name)]
                sent = 0
                try:
                    if "status" in f:
                        body = f.get("error_body", b"")
                        self.send_response(f["status"])
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                    self.send_response(200)
                    if "stream" in f:       # no Content-Length: the body runs until the server hangs up
                        self.send_header("Connection", "close")
                        self.end_headers()
                        block = f["stream"]
                        for i in range(0, len(block), 64 << 10):
                            self.wfile.write(block[i:i + (64 << 10)])
                            sent += min(64 << 10, len(block) - i)
                        self.close_connection = True
                        return
                    self.send_header("Content-Length", str(len(f["body"])))
                    self.end_headers()
                    self.wfile.write(f["body"])
                    sent = len(f["body"])
                except OSError:     # the client hung up
                    pass
                finally:
                    hub.cdn_sent[name] = sent

            def log_message(self, *a):
                pass

        self.servers = []
        for handler in (Cdn, Resolve):
            httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
            self.servers.append(httpd)
        cdn = self.servers[0]
        self.url = self.servers[1].url

    def close(self):
        for httpd in self.servers:
            httpd.shutdown()
            httpd.server_close()


@pytest.fixture
def hub():
    h = Hub()
    yield h
    h.close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def hf_env(tmp_path, endpoint, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "JCLIP_HF_")) and k != "TRANSFORMERS_OFFLINE"}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HOME=str(tmp_path / "hf_home"), JCLIP_PROGRESS="0")
    env.update({k: str(v) for k, v in extra.items()})
    return {k: v for k, v in env.items() if v != "None"}


_CATALOGUE = []


@pytest.fixture(autouse=True)
def _runner_catalogue(catalogue):
    _CATALOGUE[:] = catalogue


def convert(tmp_path, env, *args):
    """convert.py --models NAME (or ``args``) in a subprocess, torch blocked."""
    args = args or ("--models", NAME, "--src", tmp_path / "pretrained", "--out-dir", tmp_path / "weights")
    return subprocess.run([sys.executable, "-c", RUNNER, *_CATALOGUE, *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def one_error(r):
    """The single error line of a failed convert.py run (a summary line, if any, aside)."""
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("failed (1)")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def cache_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs if not f.endswith((".lock", "CACHEDIR.TAG")))


def repo_dir(cache):
    return os.path.join(cache, "models--" + REPO.replace("/", "--"))


def lay_out_cache(cache, filename, data, blob_name=None):
    """A Hugging Face cache as huggingface_hub leaves it: blobs/<sha256>,
    snapshots/<commit>/<file> a relative link to the blob, refs/main."""
    root = repo_dir(cache)
    blob = blob_name or sha256(data)
    os.makedirs(os.path.join(root, "blobs"))
    os.makedirs(os.path.join(root, "snapshots", COMMIT))
    os.makedirs(os.path.join(root, "refs"))
    with open(os.path.join(root, "blobs", blob), "wb") as f:
        f.write(data)
    os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(root, "snapshots", COMMIT, filename))
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(COMMIT)
    return os.path.join(root, "snapshots", COMMIT, filename)


# ------------------------------------------------------------------ tests

def test_download_into_the_hf_cache_then_offline(tmp_path, hub, tiny):
    data = tiny[BIN]     # only the .bin on this hub: the safetensors name answers 404
    hub.files[(REPO, BIN)] = {"body": data}
    r = convert(tmp_path, hf_env(tmp_path, hub.url))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "pretrained").exists()          # nothing copied into pretrained/
    root = repo_dir(str(tmp_path / "hf"))
    link = os.path.join(root, "snapshots", COMMIT, BIN)
    assert os.path.islink(link) and os.path.realpath(link) == os.path.join(root, "blobs", sha256(data))
    assert open(link, "rb").read() == data
    assert open(os.path.join(root, "refs", "main")).read() == COMMIT
    meta = read_meta(str(tmp_path / "weights" / f"{STEM}.safetensors"))
    assert meta["model"] == NAME and meta["source_sha256"] == sha256(data) and meta["source_file"] == BIN
    assert ("CDN GET", f"/blob/{REPO}/{BIN}") in hub.hits
    # Again, forced, with the hub unreachable and offline mode on: the cache serves, no request leaves.
    hub.hits.clear()
    r = convert(tmp_path, hf_env(tmp_path, f"http://127.0.0.1:{closed_port()}", HF_HUB_OFFLINE=1),
                "--models", NAME, "--src", tmp_path / "pretrained", "--out-dir", tmp_path / "weights", "--force")
    assert r.returncode == 0, r.stderr
    assert "in the Hugging Face cache" in r.stdout and hub.hits == []


@pytest.mark.parametrize("where", ["HF_HUB_CACHE", "HF_HOME"])
def test_convert_from_a_cache_laid_out_by_hand(tmp_path, hub, tiny, where):
    """What open_clip downloaded is converted from the cache: no network, no copy."""
    data = tiny[SAFETENSORS]
    cache = tmp_path / "hf" if where == "HF_HUB_CACHE" else tmp_path / "hf_home" / "hub"
    lay_out_cache(str(cache), SAFETENSORS, data)
    env = hf_env(tmp_path, hub.url, HF_HUB_OFFLINE=1)
    if where == "HF_HOME":
        env.pop("HF_HUB_CACHE")
    r = convert(tmp_path, env)
    assert r.returncode == 0, r.stderr
    assert hub.hits == [] and not (tmp_path / "pretrained").exists()
    meta = read_meta(str(tmp_path / "weights" / f"{STEM}.safetensors"))
    assert meta["source_sha256"] == sha256(data) and meta["source_file"] == SAFETENSORS
    # Online, the same cached file is used too (one HEAD per file, no download).
    os.remove(tmp_path / "weights" / f"{STEM}.safetensors")
    hub.files[(REPO, SAFETENSORS)] = {"body": data}
    r = convert(tmp_path, {k: v for k, v in env.items() if k != "HF_HUB_OFFLINE"})
    assert r.returncode == 0, r.stderr
    assert [h for h in hub.hits if h[0].startswith("CDN")] == []


def test_cached_blob_not_matching_its_oid_is_refused(tmp_path, tiny):
    link = lay_out_cache(str(tmp_path / "hf"), SAFETENSORS, tiny[SAFETENSORS], blob_name=sha256(b"other"))
    line = one_error(convert(tmp_path, hf_env(tmp_path, "http://127.0.0.1:9", HF_HUB_OFFLINE=1)))
    assert line.startswith(f"error: {link}: SHA-256 is {sha256(tiny[SAFETENSORS])}") and sha256(b"other") in line
    assert not (tmp_path / "weights").exists()


def test_wrong_lfs_oid_refused_and_nothing_cached(tmp_path, hub, tiny):
    wrong = sha256(b"other bytes")
    hub.files[(REPO, SAFETENSORS)] = {"body": tiny[SAFETENSORS], "oid": wrong}
    line = one_error(convert(tmp_path, hf_env(tmp_path, hub.url)))
    assert f"{REPO}/{SAFETENSORS}" in line and f"LFS oid is {wrong}" in line
    assert [f for f in cache_files(tmp_path / "hf") if "/blobs/" in f or "/snapshots/" in f] == []
    assert not (tmp_path / "weights").exists() and not (tmp_path / "pretrained").exists()


def test_no_published_sha256_refused_before_any_download(tmp_path, hub, tiny):
    hub.files[(REPO, SAFETENSORS)] = {"body": tiny[SAFETENSORS], "oid": "a" * 40}   # a git sha1: not in LFS
    line = one_error(convert(tmp_path, hf_env(tmp_path, hub.url)))
    assert "publishes no SHA-256" in line and not any(h[0].startswith("CDN") for h in hub.hits)


def test_over_long_stream_stopped_at_the_announced_size(tmp_path, hub):
    hub.files[(REPO, SAFETENSORS)] = {"body": b"x" * 1000, "stream": b"x" * (64 * MiB)}
    line = one_error(convert(tmp_path, hf_env(tmp_path, hub.url)))
    m = re.search(r"more than the 1000 bytes the hub announced; refused after (\d+) bytes", line)
    assert m and int(m.group(1)) <= 1000 + MiB, line
    assert hub.cdn_sent[SAFETENSORS] < 32 * MiB          # the client hung up long before 64 MiB
    assert [f for f in cache_files(tmp_path / "hf") if "/blobs/" in f] == []


def test_announced_size_beyond_the_card_refused(tmp_path, hub, tiny):
    from types import SimpleNamespace
    from jclip.weights.download import size_limit
    limit = size_limit(SimpleNamespace(architecture=from_open_clip_config(ARCH, TINY_CFG)))
    hub.files[(REPO, SAFETENSORS)] = {"body": tiny[SAFETENSORS], "size": limit + 1}
    line = one_error(convert(tmp_path, hf_env(tmp_path, hub.url)))
    assert f"more than a {NAME} checkpoint can hold ({limit})" in line
    assert not any(h[0].startswith("CDN") for h in hub.hits)


@pytest.mark.parametrize("body", [b"[" * 200_000, b'{"error": ' * 5000, b"[]", b"e" * (8 * MiB)])
def test_hostile_error_answer_is_one_line(tmp_path, hub, tiny, body):
    """The CDN answers 403 with a deep, a non-object or a huge body: the
    library reads an error body whole and parses it as JSON (a list or a
    number gives an AttributeError traceback; a deep tree is swallowed only by
    a catch of RuntimeError); jclip reads 64 KiB of it at most and hands the
    library a shallow JSON object or text only."""
    hub.files[(REPO, SAFETENSORS)] = {"body": tiny[SAFETENSORS], "status": 403, "error_body": body}
    line = one_error(convert(tmp_path, hf_env(tmp_path, hub.url)))
    assert f"{REPO}/{SAFETENSORS}: download failed: 403" in line


def test_token_from_hf_token(tmp_path, hub, tiny):
    hub.files[(REPO, SAFETENSORS)] = {"body": tiny[SAFETENSORS]}
    hub.token = "hf_loopback_token"
    line = one_error(convert(tmp_path, hf_env(tmp_path, hub.url)))
    assert "the hub answered HTTP 401" in line and "HF_TOKEN" in line
    r = convert(tmp_path, hf_env(tmp_path, hub.url, HF_TOKEN=hub.token))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case", ["missing", "offline", "network down", "no-download", "old variable"])
def test_failures_are_one_line(tmp_path, hub, case):
    env = hf_env(tmp_path, hub.url)
    args = ()
    if case == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    elif case == "network down":
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    elif case == "no-download":
        args = ("--models", NAME, "--src", tmp_path / "pretrained", "--out-dir", tmp_path / "weights",
                "--no-download")
    elif case == "old variable":
        env["JCLIP_HF_ENDPOINT"] = hub.url
    line = one_error(convert(tmp_path, env, *args))
    want = {"missing": f"the hub repository {REPO} has none of {SAFETENSORS}, {BIN}",
            "offline": "HF_HUB_OFFLINE is set, and the Hugging Face cache",
            "network down": "cannot be reached",
            "no-download": "--no-download given, and the Hugging Face cache",
            "old variable": "JCLIP_HF_ENDPOINT is no longer read: set HF_ENDPOINT"}[case]
    assert want in line, line
    if case in ("offline", "no-download", "old variable"):
        assert hub.hits == []


# ------------------------------------------------- plain URL downloads (OpenAI's, ConvNeXt's)

class _Plain(http.server.BaseHTTPRequestHandler):
    announce, body = None, b""
    sent = 0

    def do_GET(self):
        self.send_response(200)
        if self.announce is not None:
            self.send_header("Content-Length", str(self.announce))
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for i in range(0, len(self.body), 64 << 10):
                self.wfile.write(self.body[i:i + (64 << 10)])
                type(self).sent = i + (64 << 10)
        except OSError:
            pass

    def log_message(self, *a):
        pass


@pytest.mark.parametrize("announce", [1000, None])
def test_plain_download_stops_at_the_announced_or_card_size(tmp_path, announce):
    """1,000 bytes announced, 64 MiB sent: http.client reads the 1,000 (the
    SHA-256 check then judges them); none announced: ``max_bytes`` cuts it off."""
    from jclip.weights.download import DownloadError, download
    _Plain.announce, _Plain.body, _Plain.sent = announce, b"y" * (64 * MiB), 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Plain)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/f.pt"
    try:
        if announce:
            download(url, tmp_path / "f.pt", progress=False, max_bytes=10 * MiB)
            assert (tmp_path / "f.pt").read_bytes() == b"y" * 1000
            os.remove(tmp_path / "f.pt")
        else:
            with pytest.raises(DownloadError) as e:
                download(url, tmp_path / "f.pt", progress=False, max_bytes=4096)
            m = re.search(r"sent more than the 4096 bytes this checkpoint can hold; refused after (\d+) bytes",
                          str(e.value))
            assert m and int(m.group(1)) <= 4096 + MiB, str(e.value)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert _Plain.sent < 32 * MiB and os.listdir(tmp_path) == []
