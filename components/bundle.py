"""Pack the jobs package and the pure-Python libraries the image lacks into ConfigMap data.

Deterministic by construction (sorted entries, fixed zip timestamps and modes), so an
unchanged program renders byte-identical ConfigMaps and `pulumi preview` shows no diff.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

JOBS_DIR = Path(__file__).resolve().parent.parent / "jobs"
VENDOR_ZIP_NAME = "vendor.zip"

# httpx and what it needs at run time that the agent image does not have, and PyMySQL for
# the dispatch lock on the Dolt server (pure Python; the image has no MySQL client). anyio is
# left out: httpx only imports it for async clients, and the jobs are synchronous
# (tests run the bundle in a venv holding nothing but pydantic to prove it).
VENDORED_DISTRIBUTIONS = ("certifi", "h11", "httpcore", "httpx", "idna", "PyMySQL")

# Kubernetes rejects a ConfigMap over 1 MiB (data + binaryData + metadata).
CONFIGMAP_LIMIT_BYTES = 1024 * 1024
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIPPED_SUFFIXES = (".pyc", ".pyi")


class BundleError(Exception):
    pass


@dataclass(frozen=True)
class Bundle:
    """`sources`: file name -> text of each jobs/*.py; `vendor_zip`: the libraries."""

    sources: dict[str, str]
    vendor_zip: bytes
    vendored_versions: dict[str, str]

    def digest(self) -> str:
        """Changes with any job file's name or text, or with the vendored libraries."""
        parts = [part for name in sorted(self.sources) for part in (name, self.sources[name])]
        return digest_of(*parts, self.vendor_zip)


def digest_of(*parts: str | bytes) -> str:
    """sha256 of the parts, each followed by a NUL, so that moving a boundary between two
    parts changes the result."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode() if isinstance(part, str) else part)
        hasher.update(b"\0")
    return hasher.hexdigest()


def job_sources(jobs_dir: Path = JOBS_DIR) -> dict[str, str]:
    """Every .py file of the jobs package; the package is flat so keys need no paths."""
    nested = [p for p in jobs_dir.iterdir() if p.is_dir() and p.name != "__pycache__"]
    if nested:
        raise BundleError(f"jobs/ must stay flat to fit ConfigMap keys; found {nested[0].name}/")
    files = sorted(p for p in jobs_dir.glob("*.py") if p.is_file())
    if not any(p.name == "__main__.py" for p in files):
        raise BundleError(f"{jobs_dir} has no __main__.py")
    return {p.name: p.read_text(encoding="utf-8") for p in files}


def _distribution_files(name: str) -> tuple[str, list[tuple[str, bytes]]]:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise BundleError(
            f"{name} is not installed here; run `make setup` (requirements.txt pins it)"
        ) from None
    entries: list[tuple[str, bytes]] = []
    for file in dist.files or []:
        path = PurePosixPath(str(file))
        if ".." in path.parts:
            continue
        if path.parts[0].endswith(".dist-info"):
            # Licence texts travel with the code we redistribute, but outside any
            # .dist-info dir: a partial one on sys.path breaks importlib.metadata scans
            # (pydantic runs one to find plugins).
            if "licenses" in path.parts or path.name.upper().startswith(("LICEN", "COPYING")):
                entries.append((f"_licenses/{name}/{path.name}", _read(file)))
            continue
        if "__pycache__" in path.parts or path.suffix in _SKIPPED_SUFFIXES:
            continue
        entries.append((str(path), _read(file)))
    return dist.version, entries


def _read(file: metadata.PackagePath) -> bytes:
    return Path(str(file.locate())).read_bytes()


def vendor_zip(
    distributions: tuple[str, ...] = VENDORED_DISTRIBUTIONS,
) -> tuple[bytes, dict[str, str]]:
    versions: dict[str, str] = {}
    entries: dict[str, bytes] = {}
    for name in distributions:
        versions[name], files = _distribution_files(name)
        entries.update(files)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for arcname in sorted(entries):
            info = zipfile.ZipInfo(arcname, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            info.create_system = 3  # unix, so the mode above is read the same everywhere
            archive.writestr(info, entries[arcname], compresslevel=9)
    return buffer.getvalue(), versions


def build_bundle(jobs_dir: Path = JOBS_DIR) -> Bundle:
    archive, versions = vendor_zip()
    return Bundle(sources=job_sources(jobs_dir), vendor_zip=archive, vendored_versions=versions)
