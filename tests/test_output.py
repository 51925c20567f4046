"""jclip.progress: bars count items and show items/s; a log file gets plain lines."""
import fcntl
import io
import os
import pty
import struct
import termios

from jclip.progress import is_terminal, progress


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
