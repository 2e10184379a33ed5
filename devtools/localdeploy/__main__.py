"""`python -m devtools.localdeploy up|preview|config-set KEY VALUE`: the `local` stack by hand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devtools.localdeploy.stack import LOCAL_DIR, LocalStack


def main(argv: list[str] | None = None) -> int:
    """By hand: `python -m devtools.localdeploy up|preview|config-set KEY VALUE [--work-dir DIR]`.

    Works on the stack `make demo` left in .pulumi-local/demo (a new one when missing).
    """
    parser = argparse.ArgumentParser(
        prog="python -m devtools.localdeploy", description=main.__doc__
    )
    parser.add_argument("--work-dir", type=Path, default=LOCAL_DIR / "demo")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="pulumi up (renders the manifests)")
    commands.add_parser("preview", help="pulumi preview --diff")
    config_set = commands.add_parser("config-set", help="pulumi config set KEY VALUE")
    config_set.add_argument("key")
    config_set.add_argument("value")
    args = parser.parse_args(argv)
    work_dir: Path = args.work_dir.resolve()
    if (work_dir / "state").is_dir():
        stack = LocalStack.open(work_dir, output=print)
    else:
        stack = LocalStack.create(work_dir, output=print)
    if args.command == "up":
        stack.up()
        print(f"manifests: {stack.render_dir}")
    elif args.command == "preview":
        stack.preview(diff=True)
    else:
        stack.set_config(args.key, args.value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
