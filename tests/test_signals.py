"""Python keeps SIGINT and SIGCHLD after ``import jittor``.

Jittor's library installs C handlers that end the process at once: on SIGINT
(no KeyboardInterrupt, so no ``finally`` and jclip's temporaries stay) and on
SIGCHLD whenever any child dies of a signal (a subprocess killed by SIGKILL
took the whole pytest run with it, exit 1 and no message, after any test had
imported jittor).  jclip.jittor_env puts Python's handlers back."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import os, signal, subprocess, sys, time
{first}
import jittor
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
child.send_signal(signal.SIGKILL)
child.wait()
time.sleep(0.3)                                  # SIGCHLD has arrived by now
print("survived", child.returncode, flush=True)
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(2)
    print("no KeyboardInterrupt")
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""


@pytest.mark.parametrize("first", ["import jclip",
                                   # jittor loaded before jclip (with jclip's settings by hand)
                                   "os.environ['nvcc_path'] = ''; import jittor, jclip"])
def test_a_child_killed_by_a_signal_and_ctrl_c_reach_python_after_import_jittor(first):
    env = dict(os.environ, PYTHONPATH=REPO, log_silent="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(first=first)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["survived", "-9", "KeyboardInterrupt"], (r.stdout, r.stderr[-2000:])
