"""Guards shared by every pickle-based reader (torch files, jclip ``.pkl``).

* :func:`prescan` walks a pickle's opcodes before it is loaded: every length a
  record declares is checked against the bytes actually left, so a 100-byte
  file declaring a 12 GiB ``bytes`` fails at once instead of allocating it
  (the C unpickler reserves a declared length before reading it).
* :class:`Budget` caps the bytes a reader may materialise from a file (a
  stride-0 view, a memo reference repeated a million times, a zip bomb).
* :func:`check_depth` bounds nesting before any recursive walk.
* :func:`guarded_load` runs them in order around one restricted unpickler.

Errors are :class:`FormatError` without the file name; the caller adds it.
No Jittor, no torch.
"""
import io
import pickle
import pickletools
import struct

_MEMO_OPS = ("PUT", "BINPUT", "LONG_BINPUT")
MAX_DEPTH = 64              # nesting of containers/modules; real files use < 20
MAX_DIMS = 32               # numpy's own limit is 32 (64 in numpy 2)
SLACK = 64 << 20            # bytes any file may materialise beyond its own size


class FormatError(ValueError):
    """The bytes are not a readable checkpoint (no file name: the caller adds it)."""


class _Bounded(io.RawIOBase):
    """A read-only view of ``f`` that never reads past ``end`` (reads are
    clamped, so a huge declared length costs nothing)."""

    def __init__(self, f, end):
        super().__init__()
        self.f, self.end = f, end

    def readable(self):
        return True

    def tell(self):
        return self.f.tell()

    def _left(self):
        return max(self.end - self.f.tell(), 0)

    def read(self, n=-1):
        n = self._left() if n is None or n < 0 else min(n, self._left())
        return self.f.read(n)

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def readline(self, n=-1):
        n = self._left() if n is None or n < 0 else min(n, self._left())
        return self.f.readline(n)


def prescan(f, end):
    """Walk the opcodes of the pickle starting at ``f.tell()`` without building
    anything; FormatError when a declared length runs past ``end`` (the file's
    size) or an opcode is invalid.  ``f`` is left where it was."""
    start = f.tell()
    try:
        for op, arg, pos in pickletools.genops(_Bounded(f, end)):
            # The C unpickler grows its memo table to the largest index it
            # is given; honest pickles number entries 0, 1, 2... (each costs
            # at least one byte), so an index beyond the position is forged.
            if op.name in _MEMO_OPS and arg > (pos or 0):
                raise FormatError(f"memo index {arg} at byte {pos} is out of range")
    except (ValueError, EOFError, OverflowError, UnicodeDecodeError) as e:
        raise FormatError(f"corrupt pickle at byte {f.tell()} ({e})") from None
    finally:
        f.seek(start)


# What a restricted unpickler may raise on hostile or broken bytes.
_LOAD_ERRORS = (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, ImportError,
                struct.error, UnicodeDecodeError, OverflowError, MemoryError, RecursionError)


def guarded_load(unpickler, f, end, children=None):
    """One pickle from ``f`` (ending by ``end``) through ``unpickler`` (a
    restricted ``pickle.Unpickler`` built on ``f``), the sequence every reader
    runs: opcodes prescanned (:func:`prescan`), loaded, any failure turned
    into FormatError, nesting bounded (:func:`check_depth`, walking
    ``children``)."""
    prescan(f, end)
    try:
        obj = unpickler.load()
    except FormatError:
        raise
    except pickle.UnpicklingError as e:
        raise FormatError(f"invalid pickle: {str(e)[:200]}") from None
    except _LOAD_ERRORS as e:
        raise FormatError(f"corrupt pickle ({type(e).__name__}: {str(e)[:200]})") from None
    check_depth(obj, children=children)
    return obj


def check_shape(shape, what="tensor"):
    """``shape`` as a tuple of non-negative Python ints (FormatError otherwise)."""
    if not isinstance(shape, (tuple, list)) or len(shape) > MAX_DIMS or not all(
            type(d) is int and d >= 0 for d in shape):
        raise FormatError(f"{what}: invalid shape {_short(shape)} (non-negative integers expected)")
    return tuple(shape)


def check_index(value, what):
    """A non-negative Python int (offsets, sizes, strides)."""
    if type(value) is not int or value < 0:
        raise FormatError(f"{what} is {_short(value)}, not a non-negative integer")
    return value


class Budget:
    """Bytes a reader may still materialise: ``limit`` defaults to the file's
    size times ``factor`` plus :data:`SLACK`."""

    def __init__(self, file_size, factor=2):
        self.left = int(file_size) * factor + SLACK
        self.limit = self.left

    def take(self, nbytes, what):
        if nbytes > self.left:
            raise FormatError(
                f"{what} needs {nbytes} bytes, more than the file can honestly hold "
                f"(at most {self.limit} bytes for this file)")
        self.left -= nbytes


def check_depth(obj, limit=MAX_DEPTH, children=None):
    """FormatError when ``obj`` nests containers deeper than ``limit`` (walked
    iteratively, so a 50,000-deep pickle costs no recursion)."""
    stack, seen = [(obj, 0)], set()
    while stack:
        o, d = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        kids = children(o) if children else None
        if kids is None:
            if isinstance(o, dict):
                kids = list(o.keys()) + list(o.values())
            elif isinstance(o, (list, tuple)):
                kids = o
            else:
                continue
        if d >= limit:
            raise FormatError(f"objects nested deeper than {limit} levels")
        stack.extend((k, d + 1) for k in kids)


def _short(value):
    """A bounded description of an untrusted value (repr of a hostile object
    could be huge or recurse)."""
    if isinstance(value, (int, float, str, bytes, bool)) or value is None:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"a {type(value).__name__}"
