"""requirements.txt pins exactly what jclip imports: every third-party module
jclip/ imports (at the top or inside a function) belongs to a pinned
distribution, and every pinned distribution is imported somewhere (the rule
"do not pin what is not imported").  torch is never one of them."""
import ast
import os
import re
import sys
from importlib.metadata import packages_distributions

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(path=os.path.join(ROOT, "requirements.txt")):
    """{distribution: version} of a requirements file (``name==version`` lines)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                name, _, version = line.partition("==")
                out[_normal(name)] = version
    return out


def imported_top_levels(folder):
    """{top-level module name: first file importing it} over every .py under ``folder``
    (relative imports left out)."""
    found = {}
    for d, _, files in os.walk(folder):
        for fname in sorted(files):
            if not fname.endswith(".py"):
                continue
            path = os.path.join(d, fname)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    found.setdefault(n.split(".")[0], os.path.relpath(path, ROOT))
    return found


def third_party(found):
    """{distribution: a file importing it} for the non-stdlib, non-jclip names."""
    dists = packages_distributions()
    out = {}
    for name, where in found.items():
        if name in sys.stdlib_module_names or name == "jclip":
            continue
        for dist in dists.get(name, [name]):
            out.setdefault(_normal(dist), where)
    return out


def test_requirements_pin_exactly_what_jclip_imports():
    pins = pinned()
    used = third_party(imported_top_levels(os.path.join(ROOT, "jclip")))
    unpinned = {d: w for d, w in used.items() if d not in pins}
    unused = sorted(set(pins) - set(used))
    assert not unpinned, f"imported but not pinned in requirements.txt: {unpinned}"
    assert not unused, f"pinned in requirements.txt but imported nowhere in jclip/: {unused}"
    assert "torch" not in used
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.]*", v) for v in pins.values()), pins


def test_the_check_sees_a_planted_unpinned_import_and_an_unused_pin(tmp_path):
    (tmp_path / "m.py").write_text("import os\nfrom . import x\n\ndef f():\n    import torch\n")
    used = third_party(imported_top_levels(str(tmp_path)))
    assert set(used) == {"torch"}
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nnumpy==1.26.4\ntorch==2.14.1  # trailing\n")
    assert pinned(str(req)) == {"numpy": "1.26.4", "torch": "2.14.1"}
    assert sorted(set(pinned(str(req))) - set(used)) == ["numpy"]


@pytest.mark.parametrize("line", ["-r requirements.txt"])
def test_dev_requirements_extend_the_runtime_ones(line):
    with open(os.path.join(ROOT, "requirements-dev.txt"), encoding="utf-8") as f:
        assert line in f.read().splitlines()
