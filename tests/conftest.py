"""Shared test setup: jclip is imported first so Jittor starts with its safe defaults."""
import contextlib
import io
import os
import sys

import pytest

os.environ.setdefault("log_silent", "1")  # keep Jittor's info logs out of test output
import jclip  # noqa: E402,F401  (must precede any `import jittor`)

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py and friends


@contextlib.contextmanager
def restored_environ():
    """os.environ as it was on entry, whatever the body set or removed.

    A variable one test leaves behind reaches every later test and the
    subprocesses they start: ``use_mkl=0`` left by jittor_env.configure()
    once made every later Jittor subprocess run without oneDNN (full-size
    encodes 40x slower), and monkeypatch.delenv of an absent name restores
    nothing."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        if dict(os.environ) != saved:
            os.environ.clear()
            os.environ.update(saved)


@pytest.fixture(autouse=True)
def _no_environ_leaks():
    with restored_environ():
        yield


def _photos():
    from PIL import Image
    from sklearn.datasets import load_sample_image  # real JPEG photos shipped with scikit-learn
    out = []
    for name in ("china.jpg", "flower.jpg"):
        photo = Image.fromarray(load_sample_image(name))
        for box in (None, (0, 0, 300, 427), (10, 5, 640, 200), (0, 0, 225, 333), (1, 1, 223, 500)):
            img = photo if box is None else photo.crop(box)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out


@pytest.fixture(scope="session")
def photos():
    """Real photos (scikit-learn's samples, cropped to odd sizes and aspect
    ratios) as JPEG bytes; each call of the returned function gives fresh
    PIL images."""
    from PIL import Image
    data = _photos()
    return lambda: [Image.open(io.BytesIO(b)) for b in data]


@pytest.fixture(scope="session")
def mpirun():
    """The command prefix that starts 2 ranks on this machine's CPUs
    (``mpirun ... -np 2``), or a skip where OpenMPI is absent."""
    import shutil
    exe = shutil.which("mpirun")
    if exe is None or shutil.which("mpicc") is None:
        pytest.skip("OpenMPI is not installed (no mpirun/mpicc); `bash setup.sh --dev` installs it")
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return [exe, *root, "--oversubscribe", "-np", "2"]


# -- test order -------------------------------------------------------------
# `pytest tests --shuffle SEED` runs the collected tests in an order drawn
# from SEED, to show that no test depends on another's leftovers (no plugin
# needed; the seed is printed so a failing order can be replayed).  As
# pytest-random-order does by default, the files come in a random order and
# each file's tests in a random order within it, so a file's module-scoped
# fixtures are built once; `--shuffle-bucket global` interleaves the files
# too (every change of file tears those fixtures down and builds them again:
# slower, and a harder test of the fixtures themselves).

def pytest_addoption(parser):
    parser.addoption("--shuffle", type=int, default=None, metavar="SEED",
                     help="run the tests in a random order drawn from SEED")
    parser.addoption("--shuffle-bucket", choices=("module", "global"), default="module",
                     help="module: shuffle the files and the tests within each file (default); "
                          "global: shuffle all tests together")


def pytest_report_header(config):
    seed = config.getoption("--shuffle")
    if seed is None:
        return None
    return f"test order shuffled with --shuffle {seed} --shuffle-bucket {config.getoption('--shuffle-bucket')}"


def shuffled(items, seed, bucket):
    """``items`` in the order drawn from ``seed``: all together (``global``) or
    file by file (``module``: the files' order and each file's order drawn)."""
    import random
    rng = random.Random(seed)
    if bucket == "global":
        items = list(items)
        rng.shuffle(items)
        return items
    files = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    groups = list(files.values())
    rng.shuffle(groups)
    for group in groups:
        rng.shuffle(group)
    return [item for group in groups for item in group]


def pytest_collection_modifyitems(config, items):
    seed = config.getoption("--shuffle")
    if seed is not None:
        items[:] = shuffled(items, seed, config.getoption("--shuffle-bucket"))
