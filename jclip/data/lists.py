"""Text lists jclip reads and writes: class lists and ``path label`` lists.

One reader and one writer for each, used by the contest pipeline, the
fine-tuner and the few-shot studies, so every caller accepts the same files
and rejects a bad one with the same message (file, line, what is wrong).

- class list: ``<name> <id>`` lines, ids exactly 0..N-1 in any order
  (the contest's ``classes.txt``: ``Animal_Bear 0``);
- ``path label`` list: the label is the last field, so a path may contain
  spaces; labels are integer ids, or any string with ``numeric=False``
  (the few-shot studies name classes by their folder name).

Every text file is read as UTF-8 with an optional byte-order mark and any
line end (LF, CRLF): Windows editors save ``classes.txt`` with a BOM, which
would otherwise become part of the first class name.  Blank lines and lines
starting with ``#`` are skipped.  Importing this module does not import Jittor.
"""
import os
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from ..io import atomic_write_text

Label = Union[int, str]


class ListFormatError(ValueError):
    """A text list (class list, ``path label`` list) that does not have the
    expected format; ``jclip.data.contest`` raises it for a bad contest folder
    too (as ``ContestFormatError``)."""


def read_lines(path: str, what: str = "list") -> List[Tuple[int, str]]:
    """Numbered content lines of a UTF-8 text file.

    Parameters: ``path`` the file; ``what`` names it in errors ("class list").
    Returns: ``[(line number, line)]`` with the BOM, the line end and the
    surrounding white space removed; blank and ``#`` comment lines left out.
    Raises ListFormatError when the file is missing or not UTF-8 text.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ListFormatError(f"{path}: {what} not found")
    try:
        # utf-8-sig drops a leading BOM; text mode turns CRLF (and CR) into LF
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ListFormatError(f"{path}: {what} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    lines = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append((n, line))
    return lines


# --------------------------------------------------------------------------
# Class lists
# --------------------------------------------------------------------------

def read_classes(path: str) -> List[str]:
    """Class names by id from ``<name> <id>`` lines.

    Parameters: ``path`` the class list (a name may contain spaces; the id is
    the last field).
    Returns: the names, index = id.  Ids must be exactly 0..N-1 (any order)
    and names unique; anything else raises ListFormatError naming the line.
    """
    by_id = {}
    for n, line in read_lines(path, "class list"):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise ListFormatError(f"{path}:{n}: expected `<name> <id>`, got {line!r}")
        name, cid = parts[0], int(parts[1])
        if cid in by_id:
            raise ListFormatError(f"{path}:{n}: id {cid} given twice ({by_id[cid]!r} and {name!r})")
        by_id[cid] = name
    if not by_id:
        raise ListFormatError(f"{path}: no classes")
    missing = sorted(set(range(len(by_id))) - set(by_id))
    if missing:
        raise ListFormatError(f"{path}: ids must be 0..{len(by_id) - 1}; missing {missing[:5]}")
    names = [by_id[i] for i in range(len(by_id))]
    seen, dup = set(), []
    for x in names:
        if x in seen and x not in dup:
            dup.append(x)
        seen.add(x)
    if dup:
        raise ListFormatError(f"{path}: class names given twice: {sorted(dup)[:5]}")
    return names


def write_classes(path: str, names: Sequence[str]) -> None:
    """Write ``<name> <id>`` lines (id = position), atomically, UTF-8 without BOM."""
    atomic_write_text(path, "".join(f"{name} {i}\n" for i, name in enumerate(names)))


# --------------------------------------------------------------------------
# `path label` lists
# --------------------------------------------------------------------------

def read_labelled_list(path: str, num_classes: Optional[int] = None,
                       numeric: bool = True) -> List[Tuple[str, Label]]:
    """``[(path as written, label)]`` from ``path label`` lines.

    Parameters: ``path`` the list; ``num_classes`` when given, integer labels
    must lie in 0..num_classes-1; ``numeric`` False keeps labels as strings
    (class names), True requires non-negative integers.
    Returns: the items in file order.  Raises ListFormatError naming the file
    and line of the first bad line, or when the list has no items.
    """
    items = []
    for n, line in read_lines(path, "list"):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or (numeric and not parts[1].isdigit()):
            raise ListFormatError(f"{path}:{n}: expected 'path label'"
                                  f"{' with an integer label' if numeric else ''}, got {line!r}")
        label: Label = parts[1]
        if numeric:
            label = int(label)
            if num_classes is not None and not label < num_classes:
                raise ListFormatError(f"{path}:{n}: label {label} out of range 0..{num_classes - 1}")
        items.append((parts[0], label))
    if not items:
        raise ListFormatError(f"{path}: no 'path label' lines")
    return items


def write_labelled_list(path: str, items: Iterable[Tuple[str, Label]]) -> None:
    """Write ``path label`` lines, one per item, newline-terminated, atomically."""
    lines = []
    for p, y in items:
        if p != p.strip() or "\n" in p or "\r" in p:
            # read_labelled_list strips lines: such a path would not read back
            raise ListFormatError(f"{path}: cannot write path {p!r} (leading/trailing space or a line break)")
        lines.append(f"{p} {y}\n")
    atomic_write_text(path, "".join(lines))


def resolve(path_in_list: str, list_file: str, root: Optional[str] = None) -> str:
    """A list entry as a usable path: absolute paths unchanged, relative ones
    joined to ``root`` (default: the list file's folder)."""
    base = os.path.dirname(os.path.abspath(list_file)) if root is None else root
    return os.path.join(base, path_in_list)
