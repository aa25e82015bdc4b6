"""Files on disk: content keys, atomic writes, archives read safely in memory, downloads.

Nothing here extracts an archive to disk: members are read into memory while the archive
streams past, so no member can write outside a target folder. We still refuse archives whose
member names are absolute or climb out with '..', or whose links point outside the archive,
because such an archive was not made by packing a dataset folder.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from tqdm import tqdm

from cnnlab.data.dataset import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")

# Errors a damaged archive raises somewhere in tarfile, gzip, bz2, lzma or zlib.
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)

_CHUNK = 1 << 20  # bytes per read when hashing or downloading


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def folder_digest(root: Path) -> str:
    """A key for a folder's content without reading it: relative paths, sizes, mtimes.

    Sixty thousand stats take a fraction of a second where reading the bytes would not.
    A file rewritten with the same size within the filesystem's mtime resolution goes
    unnoticed; that is the price of a fast start.
    """
    h = hashlib.sha256()
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).as_posix()
        entries.append(f"d {rel}")  # an empty class folder changes the key too
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            entries.append(f"f {rel}/{name} {st.st_size} {st.st_mtime_ns}")
    h.update("\n".join(entries).encode())
    return h.hexdigest()


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: readers see all or nothing.

    The temporary name is unique per call, so several processes (torchrun ranks) filling the
    same cache at once each write their own file and the last rename wins; all are equal.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache is as readable as any download
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def member_path(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    """The member's path inside the archive, or DataError if it could escape a target folder."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\") or ".." in path.parts:
        raise DataError(
            f"{archive}: unsafe member path {name!r} (absolute or '..'); not reading it"
        )
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        # Symlink targets are relative to the link's folder, hard link targets to the root.
        base = path.parent.parts if member.issym() else ()
        depth = len(base)
        for part in target.parts:
            depth += -1 if part == ".." else 0 if part == "." else 1
            if depth < 0:
                break
        if target.is_absolute() or depth < 0:
            raise DataError(
                f"{archive}: member {name!r} links outside the archive ({member.linkname!r}); "
                "not reading it"
            )
    return PurePosixPath(*[p for p in path.parts if p != "."])


def iter_tar(path: Path, wanted: Callable[[PurePosixPath], bool]) -> Iterator[tuple[str, Any]]:
    """Stream an archive once, checking every member name; yield what the caller wants.

    Yields ("file", (member_path, bytes)) for regular files with wanted(member_path),
    ("dir", member_path) for folders and ("link", member_path) for links. Reading in stream
    mode keeps a .tar.gz of 60,000 small files to one pass of decompression.

    Raises:
        DataError: unsafe member, or a truncated or corrupt archive.
    """
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                mpath = member_path(member, path)
                if member.isdir():
                    yield "dir", mpath
                elif member.issym() or member.islnk():
                    yield "link", mpath
                elif member.isfile() and wanted(mpath):
                    f = tar.extractfile(member)
                    assert f is not None  # regular files always have data
                    yield "file", (mpath, f.read())
    except ARCHIVE_ERRORS as e:
        raise DataError(f"{path}: truncated or corrupt archive ({e})") from e


def download(url: str, dest: Path, md5: str, *, progress: bool = True) -> None:
    """Fetch `url` to `dest` through a temporary file, check its md5, then rename.

    On any failure nothing is left at `dest` nor beside it.

    Raises:
        DataError: no network, an HTTP error, or an md5 mismatch.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    h = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as f:
            with urllib.request.urlopen(url, timeout=60) as response:
                size = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=size, unit="B", unit_scale=True, desc=dest.name, disable=not progress
                ) as bar:
                    while chunk := response.read(_CHUNK):
                        f.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != md5:
            raise DataError(
                f"download of {url} has md5 {h.hexdigest()}, expected {md5}; removed it. "
                f"Try again, or put a good copy at {dest}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if type(e) is urllib.error.URLError else e
        raise DataError(
            f"cannot download {url} ({reason}); put {dest.name} (md5 {md5}) at {dest} "
            "by hand, or pass a path to an archive or folder"
        ) from e
    finally:
        Path(tmp).unlink(missing_ok=True)
