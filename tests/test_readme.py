"""The README stays short and agrees with the tree, the config keys and the Makefile.

Its two generated tables are checked row by row in tests/test_config.py; this file checks
that nothing a reader looks for is missing from it.
"""

from __future__ import annotations

import re
import subprocess

import yaml

from components.config import CONFIG_KEYS
from devtools.paths import ROOT

MAX_LINES = 160
# Keys of Pulumi.prod.yaml under the project's own namespace are named bare in the README;
# provider keys (`kubernetes:…`) keep their namespace.
PROJECT = "beads-autodispatch"


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text under `## title`, up to the next `## ` heading."""
    parts = re.split(rf"^## {re.escape(title)}\n", readme(), maxsplit=1, flags=re.MULTILINE)
    assert len(parts) == 2, f"README.md has no '## {title}' section"
    return re.split(r"^## ", parts[1], maxsplit=1, flags=re.MULTILINE)[0]


def layout_paths() -> list[str]:
    """The paths an entry of the layout list names: backticked, before its ' — '."""
    entries = [line.strip() for line in section("Layout").splitlines()]
    heads = [line.split(" — ", 1)[0] for line in entries if line.startswith("- ")]
    return [path for head in heads for path in re.findall(r"`([^`]+)`", head)]


def tracked_top_level() -> set[str]:
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True, text=True
    ).stdout
    return {path.split("/")[0] for path in listed.split("\0") if path and path[0] != "."}


def config_keys() -> set[str]:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text(encoding="utf-8"))["config"]
    prod = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text(encoding="utf-8"))["config"]
    prod_keys = {key.removeprefix(f"{PROJECT}:") for key in prod}
    return {key.name for key in CONFIG_KEYS} | set(declared) | prod_keys


def phony_targets() -> list[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    lines = re.findall(r"^\.PHONY:(.*)$", makefile, flags=re.MULTILINE)
    return [target for line in lines for target in line.split()]


def test_the_readme_is_short() -> None:
    lines = len(readme().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines; at most {MAX_LINES}"


def test_every_tracked_top_level_entry_is_in_the_layout() -> None:
    listed = {path.split("/")[0] for path in layout_paths()}
    assert sorted(tracked_top_level() - listed) == []


def test_every_path_the_layout_names_exists() -> None:
    paths = layout_paths()
    assert paths, "the layout section names no path"
    assert [path for path in paths if not (ROOT / path).exists()] == []


def test_every_config_key_has_an_entry_in_the_configuration_section() -> None:
    text = section("Configuration")
    assert sorted(key for key in config_keys() if f"`{key}`" not in text) == []


def test_every_make_target_is_in_the_make_targets_section() -> None:
    text, targets = section("Make targets"), phony_targets()
    assert "setup" in targets
    assert [target for target in targets if f"`make {target}`" not in text] == []
