"""bench/gpu_check.sh --device cpu: the GPU check's every step on tiny sizes, so it cannot rot
before a GPU is lent (the CUDA run itself is bench/gpu_check.sh without arguments)."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_cpu_mode_runs_every_step(tmp_path):
    out = tmp_path / "RESULTS_gpu.md"
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run(["bash", os.path.join(REPO, "bench", "gpu_check.sh"), "--device", "cpu",
                        "--out", str(out), "--work", str(work)],
                       env=dict(os.environ, PYTHON=sys.executable, log_silent="1"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = out.read_text()
    for section in ("## Build and a tiny op", "## Parity", "## Throughput", "## Heads",
                    "## The contest pipeline on a generated set"):
        assert section in report
    parity = [l for l in report.splitlines() if "CPU fused kernels vs CPU generic ops" in l]
    assert len(parity) == 3 and all(l.endswith("| ok |") for l in parity)
    assert report.count("| float32 |") == 6                      # 3 models x 2 batch sizes
    for step in ("process.py", "train.sh", "test.sh"):
        assert any(l.startswith(f"| {step} |") and l.endswith("| ok |") for l in report.splitlines())
    assert "result.txt: 30 lines of 5 ids: ok" in report and "overall: ok" in report
    assert "(running...)" not in report
    assert os.listdir(work) == []                                # the scratch set is removed
