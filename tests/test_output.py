"""What a user sees: progress bars (items/s; plain lines in a log), Jittor's own log
lines hidden unless asked for (the plots: tests/test_plot.py)."""
import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from jclip.progress import is_terminal, progress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(stream, monkeypatch, interval="0"):
    monkeypatch.setenv("JCLIP_PROGRESS_INTERVAL", interval)
    with progress(total=1496, desc="encode vit", unit="img", file=stream) as bar:
        for _ in range(3):
            bar.update(512 if bar.n + 512 <= 1496 else 1496 - bar.n)
    for _ in progress(range(3), desc="outer", unit="epoch", file=stream):
        for _ in progress(range(4), desc="inner", leave=False, file=stream):
            pass


def test_plain_lines_when_not_a_terminal(monkeypatch):
    out = io.StringIO()
    assert not is_terminal(out)
    _run(out, monkeypatch)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text        # no in-place redraws, no cursor codes
    lines = text.splitlines()
    assert lines and all(l.strip() == l and l for l in lines)
    # counted in images (not batches) with a rate in images per second
    assert any("1496/1496" in l and "img/s" in l for l in lines)
    assert any(l.startswith("outer: 100% 3/3") for l in lines)


def test_short_bars_print_nothing_in_a_log(monkeypatch):
    out = io.StringIO()
    _run(out, monkeypatch, interval="30")
    assert out.getvalue() == ""                            # all done well within the 2 s delay


def test_terminal_gets_a_live_bar(monkeypatch):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # 100 columns
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert is_terminal(tty)
            _run(tty, monkeypatch)
            tty.flush()
        text = os.read(master, 1 << 16).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert "\r" in text and "1496/1496" in text


def test_disabled(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv("JCLIP_PROGRESS", "0")
    _run(out, monkeypatch)
    assert out.getvalue() == ""


# --------------------------------------------------------------------------
# Jittor's log lines
# --------------------------------------------------------------------------

JITTOR_IMPORT = ("import jclip, sys\n"
                 "if len(sys.argv) > 1: jclip.jittor_env.set_verbose(True)\n"
                 "import jittor\n"
                 "print('log_silent', jittor.flags.log_silent)\n")


def _import_jittor(env_extra, *argv):
    env = {k: v for k, v in os.environ.items() if k not in ("log_silent", "JCLIP_VERBOSE")}
    env.update(env_extra)
    r = subprocess.run([sys.executable, "-c", JITTOR_IMPORT, *argv], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.slow
def test_jittor_info_lines_only_when_verbose():
    quiet = _import_jittor({})
    assert "[i " not in quiet.stderr and "log_silent 1" in quiet.stdout
    for loud in (_import_jittor({"JCLIP_VERBOSE": "1"}), _import_jittor({}, "--verbose")):
        assert "[i " in loud.stderr and "g++ at" in loud.stderr and "log_silent 0" in loud.stdout
    own = _import_jittor({"log_silent": "0"})           # the user's own setting wins
    assert "[i " in own.stderr


def test_configure_sets_log_silent_unless_told_otherwise(monkeypatch):
    from jclip import jittor_env
    for env, expect in (({}, "1"), ({"JCLIP_VERBOSE": "1"}, None), ({"log_silent": "0"}, "0")):
        monkeypatch.delenv("log_silent", raising=False)
        monkeypatch.delenv("JCLIP_VERBOSE", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        jittor_env._quieted.clear()
        jittor_env._quiet_jittor_logs()
        assert os.environ.get("log_silent") == expect
