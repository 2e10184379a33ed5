"""Where the repository is: the one definition of its root, for the wing and the tests."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
