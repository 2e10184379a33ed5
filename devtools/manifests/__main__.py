"""`python -m devtools.manifests OUT_DIR`: write the manifests a deploy would apply as YAML."""

from __future__ import annotations

import sys
from pathlib import Path

from devtools.manifests.render import write


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m devtools.manifests OUT_DIR", file=sys.stderr)
        return 2
    for path in write(Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
