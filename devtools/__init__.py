"""The tooling wing: what `make demo`, `make bench`, `make cluster` and the tests drive.

Not the product (that is `__main__.py`, `components/` and `jobs/`); nothing there imports
from here. `devtools.paths.ROOT` is the repository root every module here uses.
"""
