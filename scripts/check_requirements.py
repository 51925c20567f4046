"""Exit 0 when every pinned requirement in the given file is installed at that version."""
import sys
from importlib import metadata


def pins(path):
    for line in open(path):
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            yield from pins(line[3:].strip())
        elif "==" in line:
            name, version = line.split("==")
            yield name.strip(), version.strip()


missing = []
for name, version in pins(sys.argv[1]):
    try:
        if metadata.version(name) != version:
            missing.append(name)
    except metadata.PackageNotFoundError:
        missing.append(name)
sys.exit(1 if missing else 0)
