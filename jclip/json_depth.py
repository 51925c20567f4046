"""How deep a JSON text nests, known before a parser recurses into it.

The one check every reader of untrusted JSON (jclip's files, configurations,
a server's answers) makes first: a document of many nested brackets would
exhaust the parser's stack.  Pure Python (no numpy): the configuration reader
uses it too.
"""
import re
from typing import Union

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def json_depth(data: Union[bytes, str]) -> int:
    """The deepest nesting of [ and { in a JSON text (strings skipped): what
    the parser would recurse into, known before it runs."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    depth = deepest = 0
    for ch in _NOT_BRACKET.sub(b"", _STRING.sub(b'""', data)):
        if ch in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest
