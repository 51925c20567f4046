"""Seeded fuzzing of every format jclip reads (issue 13).

Tiny valid checkpoints (TorchScript, torch zip, legacy torch, jclip .pkl,
jclip safetensors) are mutated 500 times each: flipped bytes, truncation,
inserted/deleted spans, integers planted over header fields, digits changed
in the safetensors JSON header, duplicated zip members.  Every mutant must
either load to exactly the original arrays or raise CheckpointError naming
the file - in a subprocess (a segfault is a failure) under RLIMIT_AS = 1 GiB,
each in under 2 s.

The one allowed third outcome: the legacy torch format has no checksum, so a
mutation lying wholly inside its raw tensor bytes loads with the same names,
shapes and dtypes but other values (nothing can detect that; see
docs/security.md).
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jclip  # noqa: F401
from jclip.weights.checkpoint import save_state_dict

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUTANTS = 500
FORMATS = ("torchscript", "zip", "legacy", "pkl", "safetensors")

RUNNER = textwrap.dedent("""
    import io, json, os, pickletools, random, resource, struct, sys, time, zipfile
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    sys.path.insert(0, ROOT)
    sys.modules["torch"] = None
    import numpy as np
    from jclip.weights.checkpoint import CheckpointError, read_state_dict

    src, kind, n, workdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    data = open(src, "rb").read()
    want, _ = read_state_dict(src)
    vmpeak = lambda: int(open("/proc/self/status").read().split("VmPeak:")[1].split()[0])
    base_kb = vmpeak()      # after the imports (their size depends on the environment)
    rng = random.Random(f"jclip-fuzz-{kind}")

    data_start = len(data)
    if kind == "legacy":      # after the five pickles: raw storages (no checksum)
        f = io.BytesIO(data)
        for _ in range(5):
            for op, arg, pos in pickletools.genops(f):
                pass
        data_start = f.tell()

    def plant_int(b):
        at = rng.randrange(len(b))
        size = rng.choice((1, 2, 4, 8))
        val = rng.choice((0, 1, 255, -1, 2**31 - 1, 2**40, -2**40, rng.getrandbits(60)))
        raw = val.to_bytes(8, "little", signed=True)[:size]
        return b[:at] + raw + b[at + size:], [at, at + size]

    def mutate(b):
        op = rng.choice(("flip", "truncate", "insert", "delete", "int", "special"))
        b = bytearray(b)
        if op == "flip":
            spots = [rng.randrange(len(b)) for _ in range(rng.randint(1, 8))]
            for i in spots:
                b[i] ^= rng.randint(1, 255)
            return bytes(b), op, [min(spots), max(spots) + 1]
        if op == "truncate":
            at = rng.randrange(len(b))
            return bytes(b[:at]), op, [at, len(b)]
        if op == "insert":
            at = rng.randrange(len(b))
            return bytes(b[:at]) + os.urandom(rng.randint(1, 64)) + bytes(b[at:]), op, [at, len(b)]
        if op == "delete":
            at = rng.randrange(len(b))
            return bytes(b[:at] + b[at + rng.randint(1, 64):]), op, [at, len(b)]
        if op == "int" or kind in ("legacy", "pkl"):
            out, span = plant_int(bytes(b))
            return out, "int", span
        if kind == "safetensors":           # a number in the JSON header
            (hn,) = struct.unpack("<Q", b[:8])
            digits = [i for i in range(8, 8 + hn) if chr(b[i]).isdigit()]
            i = rng.choice(digits)
            new = str(rng.choice((0, 1, 7, 4096, 2**31, 2**64 - 1, 10**30))).encode()
            return bytes(b[:i]) + new + bytes(b[i + 1:]), "header", [i, len(b)]
        # zip formats: a member duplicated (possibly altered) at the end
        zin = zipfile.ZipFile(io.BytesIO(bytes(b)))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zout:
            for info in zin.infolist():
                zout.writestr(info.filename, zin.read(info))
            victim = rng.choice(zin.infolist())
            body = bytearray(zin.read(victim))
            if body and rng.random() < 0.5:
                body[rng.randrange(len(body))] ^= 0xFF
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                zout.writestr(victim.filename, bytes(body))
        return out.getvalue(), "dup-member", [0, len(out.getvalue())]

    fails, counts, slowest = [], {"same": 0, "error": 0, "data-only": 0}, 0.0
    path = os.path.join(workdir, f"mutant-{kind}.bin")
    for i in range(n):
        blob, op, span = mutate(data)
        with open(path, "wb") as f:
            f.write(blob)
        t = time.perf_counter()
        try:
            got, _ = read_state_dict(path)
            same = list(got) == list(want) and all(
                got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
                and np.array_equal(got[k], want[k]) for k in want)
            if same:
                counts["same"] += 1
            elif kind == "legacy" and span[0] >= data_start and len(blob) == len(data) and \\
                    all(got[k].shape == want[k].shape and got[k].dtype == want[k].dtype
                        for k in want) and list(got) == list(want):
                counts["data-only"] += 1
            else:
                fails.append({"i": i, "op": op, "span": span, "why": "loaded other arrays"})
        except CheckpointError as e:
            counts["error"] += 1
            if path not in str(e):
                fails.append({"i": i, "op": op, "why": "error without the file: " + str(e)[:200]})
        except BaseException as e:
            fails.append({"i": i, "op": op, "why": f"{type(e).__name__}: {str(e)[:200]}"})
        dt = time.perf_counter() - t
        slowest = max(slowest, dt)
        if dt > 2:
            fails.append({"i": i, "op": op, "why": f"took {dt:.1f} s"})
    print(json.dumps({"fails": fails[:20], "nfails": len(fails), "counts": counts,
                      "slowest": slowest, "growth_kb": vmpeak() - base_kb}))
""")


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    torch.jit.save(torch.jit.script(lin), str(d / "torchscript.pt"))
    sd = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).half(),
          "d": torch.randn(6)[::2]}
    torch.save(sd, d / "zip.pt")
    torch.save(sd, d / "legacy.pt", _use_new_zipfile_serialization=False)
    arrays = {k: v.numpy() for k, v in sd.items()}
    save_state_dict(d / "pkl.pkl", arrays, {"model": "fuzz"})
    save_state_dict(d / "safetensors.safetensors", arrays, {"model": "fuzz"})
    return {"torchscript": d / "torchscript.pt", "zip": d / "zip.pt", "legacy": d / "legacy.pt",
            "pkl": d / "pkl.pkl", "safetensors": d / "safetensors.safetensors"}


@pytest.mark.parametrize("kind", FORMATS)
def test_fuzz_mutants_load_exactly_or_fail_cleanly(originals, tmp_path, kind):
    script = f"ROOT = {ROOT!r}\n" + RUNNER
    # Under sh, a segfault is exit status 139 (a Jittor imported into this
    # process by another test would quit on the child's SIGCHLD).
    r = subprocess.run(["sh", "-c", '"$0" "$@"; exit $?', sys.executable, "-c", script,
                        str(originals[kind]), kind, str(MUTANTS), str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"runner crashed (rc {r.returncode}): {r.stderr[-3000:]}"
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(kind, res["counts"], f"slowest {res['slowest']:.3f} s",
          f"VmPeak growth {res['growth_kb']} kB")
    assert res["nfails"] == 0, res["fails"]
    assert sum(res["counts"].values()) == MUTANTS
    assert res["counts"]["error"] > MUTANTS // 4       # the mutations do bite
    assert res["growth_kb"] < 64 << 10      # KiB: no mutant made the reader grow by 64 MiB
