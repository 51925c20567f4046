"""One progress bar for the whole package (tqdm based).

    from jclip.progress import progress
    with progress(total=len(paths), desc="encode vit", unit="img") as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))          # count images (or prompts), not batches
    for epoch in progress(range(epochs), desc="LP++", unit="epoch"):
        ...

On a terminal it is an ordinary tqdm bar showing items/s.  When stderr is not
a terminal (a log file, a pipe, CI) it writes plain lines instead: one when
the bar has run 2 s (shorter bars print nothing), one at most every
``JCLIP_PROGRESS_INTERVAL`` seconds (30), and one when it ends (if ``leave``),
with no carriage returns and no cursor-movement codes, so a redirected log
stays readable.
``JCLIP_PROGRESS=0`` turns every bar off.
"""
import os
import re
import sys
from typing import Iterable, Optional, TextIO

from tqdm import tqdm

__all__ = ["progress", "is_terminal"]

# ANSI CSI sequences (cursor up, erase line ...) that tqdm writes for nested bars
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# without a bar: "encode vit: 40%| 600/1496 img [00:50<01:15, 12.0 img/s]"
_PLAIN_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_PLAIN_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def is_terminal(stream: Optional[TextIO] = None) -> bool:
    """True when ``stream`` (default: stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # no isatty, or closed
        return False


class _PlainLines:
    """A file for tqdm that turns its in-place redraws into whole lines.

    tqdm redraws with '\\r' + status and moves between nested bars with ANSI
    codes; here every status becomes one line (repeats dropped) and the codes
    are removed.
    """

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.last = None

    def write(self, s: str) -> None:
        for piece in re.split(r"[\r\n]", _ESCAPES.sub("", s)):
            piece = piece.strip()
            if piece and piece != self.last:
                self.stream.write(piece + "\n")
                self.last = piece

    def flush(self) -> None:
        getattr(self.stream, "flush", lambda: None)()


class _Bar(tqdm):
    monitor_interval = 0      # no monitor thread: plain mode must not redraw on its own


def progress(iterable: Optional[Iterable] = None, *, total: Optional[int] = None,
             desc: Optional[str] = None, unit: str = "img", enabled: bool = True,
             leave: bool = True, unit_scale: bool = False, initial: int = 0,
             file: Optional[TextIO] = None) -> tqdm:
    """A progress bar over ``iterable`` or for ``total`` items updated by hand.

    Parameters:
        iterable: items to yield (its ``len`` gives ``total`` when it has one).
        total: the number of items (images, prompts, epochs, bytes) to count.
        desc: what is being done ("encode vit").
        unit: what one item is ("img", "prompt", "epoch", "B"); the rate is shown
            as items/s.
        enabled: False returns a silent bar (same API, prints nothing).
        leave: keep the final state on screen (or the final line in a log).
        unit_scale: show 1.2k / 3.4M (with ``unit="B"`` in steps of 1024).
        initial: items already done (a resumed download's bytes).
        file: the stream (default stderr); plain lines when it is not a terminal.
    Returns:
        a ``tqdm`` object: iterate over it, or call ``update(n)`` with the number
        of items just done; use it as a context manager (or call ``close()``).
    """
    stream = sys.stderr if file is None else file
    disable = not enabled or os.environ.get("JCLIP_PROGRESS", "1") == "0"
    kw = dict(total=total, desc=desc, unit=unit, leave=leave, unit_scale=unit_scale,
              unit_divisor=1024 if unit == "B" else 1000, initial=initial, disable=disable)
    if is_terminal(stream):
        return _Bar(iterable, file=stream, dynamic_ncols=True, **kw)
    try:
        interval = float(os.environ.get("JCLIP_PROGRESS_INTERVAL", "30"))
    except ValueError:
        interval = 30.0
    n = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    return _Bar(iterable, file=_PlainLines(stream), mininterval=interval, maxinterval=interval,
                delay=min(2.0, interval), ascii=True, bar_format=_PLAIN_FORMAT if n else _PLAIN_FORMAT_NO_TOTAL, **kw)
