"""Downloading MVTec AD and VisA: resumable, checksummed, safely extracted.

Three layers, each usable on its own:

- :func:`download_file` streams one URL into ``<dest>.part`` (resuming an
  interrupted ``.part`` with an HTTP ``Range`` request), checks size and SHA-256,
  and only then renames it to ``dest``. A file already at ``dest`` that passes the
  checks is never fetched again, which is also how a manual install works: put
  the archive at the printed path and rerun.
- :func:`safe_extract` unpacks a tar (any compression) or zip archive after
  validating *every* member: no absolute paths, no ``..``, no links that point
  outside the target, no device files. A rejected archive writes nothing.
- :func:`download_dataset` ties them together for a registered
  :class:`DatasetSource` (``mvtec``, ``visa``): download into
  ``<root>/.downloads/``, extract into ``root``, check the category folders, and
  write a ``<root>/.vtfusion_<name>_ok`` marker so that later calls return at once.

Only the standard library does the networking (``urllib``); ``tqdm`` draws the bars.

Example::

    from vtfusion.data.download import download_dataset
    root = download_dataset("mvtec", "data/mvtec_ad")   # ~4.9 GB, once
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from vtfusion.data.categories import MVTEC_AD_CATEGORIES, VISA_CATEGORIES
from vtfusion.io import atomic_write_json

__all__ = [
    "DOWNLOADS_DIRNAME",
    "DatasetSource",
    "DownloadError",
    "ExtraFile",
    "SOURCES",
    "UnsafeArchiveError",
    "dataset_source",
    "download_dataset",
    "download_file",
    "marker_path",
    "safe_extract",
    "sha256_of_file",
]

DOWNLOADS_DIRNAME = ".downloads"
"""Folder under the dataset root that holds the archives and their ``.part`` files."""

_USER_AGENT = "vtfusion-downloader/0.1 (python-urllib)"
_PART_SUFFIX = ".part"


# --------------------------------------------------------------------------- errors


class DownloadError(RuntimeError):
    """A download, its verification or its extraction failed; the message says what to do."""


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the target folder (or is a device file).

    Raised before anything is written. ``member`` is the offending member's name.
    """

    def __init__(self, message: str, member: str):
        super().__init__(message)
        self.member = member


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ExtraFile:
    """A single file fetched beside a dataset's archive.

    Attributes:
        url: where it is published.
        dest: its path relative to the dataset root, POSIX style (``split_csv/1cls.csv``).
        sha256: published SHA-256, or ``None`` when none is published (the computed
            digest is then printed so a user can pin it).
    """

    url: str
    dest: str
    sha256: str | None = None


@dataclass(frozen=True)
class DatasetSource:
    """Where a benchmark's archive comes from and what it must contain.

    Attributes:
        name: registry key (``mvtec``, ``visa``); also names the ``.vtfusion_<name>_ok`` marker.
        url: the archive's official URL.
        filename: the archive's file name in ``<root>/.downloads/`` (its suffix tells the format).
        sha256: published SHA-256 of the archive, or ``None`` when none is published.
        size: published size in bytes, or ``None``.
        extract_subdir: folder *inside* the archive that holds the dataset (its contents
            land directly in the root); ``None`` when members are already laid out
            relative to the root, as in MVTec AD and VisA.
        extra_files: single files fetched beside the archive (VisA's split CSV).
        required_dirs: folders that must exist under the root after extraction
            (the category folders); a missing one is a clear error, not a silent gap.
        homepage: the page where a human gets the current link and the licence.
        license: licence of the data, printed before the download starts.
    """

    name: str
    url: str
    filename: str
    sha256: str | None
    size: int | None
    extract_subdir: str | None = None
    extra_files: tuple[ExtraFile, ...] = ()
    required_dirs: tuple[str, ...] = ()
    homepage: str | None = None
    license: str | None = None


# MVTec AD (Bergmann et al., CVPR 2019). MVTec rotates its mydrive.ch share links (older
# ones such as .../shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/...
# now answer 404); this is the link anomalib switched to in 2026 (open-edge-platform/anomalib
# PR #3673, fixing issue #3608). The archive behind every link is the same file: anomalib's
# DOWNLOAD_INFO for MVTec AD publishes this SHA-256 and has kept it across the URL changes.
# The archive's members are laid out as <category>/{train,test,ground_truth}/... plus
# license.txt and readme.txt at the top level. No byte size is published.
_MVTEC = DatasetSource(
    name="mvtec",
    url=("https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/"
         "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz"),
    filename="mvtec_anomaly_detection.tar.xz",
    sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
    size=None,
    extract_subdir=None,
    required_dirs=MVTEC_AD_CATEGORIES,
    homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad/downloads",
    license="CC BY-NC-SA 4.0 (non-commercial use only), MVTec Software GmbH",
)

# VisA (Zou et al., ECCV 2022), hosted by Amazon in the amazon-visual-anomaly S3 bucket
# (AWS Open Data registry: https://registry.opendata.aws/visa/). The SHA-256 is the one
# anomalib's VisA DOWNLOAD_INFO publishes (its earlier releases published the MD5
# ef908989b6dc701fc218f643c127a4de of the same file). Members: <category>/Data/{Images,Masks}/...
# and split_csv/ at the top level, which is exactly what the official 1cls.csv paths assume.
# The one-class split CSV is also fetched from the dataset's GitHub repository so that the
# split file always sits at <root>/split_csv/1cls.csv; no checksum is published for it, so
# sha256 is None and the computed digest is printed at download time.
_VISA = DatasetSource(
    name="visa",
    url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
    filename="VisA_20220922.tar",
    sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
    size=None,
    extract_subdir=None,
    extra_files=(
        ExtraFile(
            url="https://raw.githubusercontent.com/amazon-science/spot-diff/main/split_csv/1cls.csv",
            dest="split_csv/1cls.csv",
            sha256=None,  # not published; the digest is printed when it is fetched
        ),
    ),
    required_dirs=VISA_CATEGORIES,
    homepage="https://github.com/amazon-science/spot-diff",
    license="CC BY 4.0 (see LICENSE-DATASET in the archive), Amazon",
)

SOURCES: dict[str, DatasetSource] = {s.name: s for s in (_MVTEC, _VISA)}
"""Registered downloadable benchmarks, by name."""


def dataset_source(name: str) -> DatasetSource:
    """The registered :class:`DatasetSource` called ``name``; ``ValueError`` lists the valid names."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r} for download; valid names: {', '.join(sorted(SOURCES))}"
        ) from None


def marker_path(name: str, root: str | Path) -> Path:
    """``<root>/.vtfusion_<name>_ok``: written last, its presence means the dataset is complete."""
    return Path(root).expanduser() / f".vtfusion_{name}_ok"


# --------------------------------------------------------------------------- download_file


def sha256_of_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def _say(message: str) -> None:
    print(message, flush=True)


def _manual_steps(url: str, dest: Path) -> str:
    return (f"To install it by hand: download\n    {url}\n"
            f"on a machine with internet access, copy the file to\n    {dest}\n"
            f"and rerun the same command: it will then only verify and extract.")


class _Interrupted(Exception):
    """The transfer stopped early; the ``.part`` file holds what arrived."""


def download_file(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    chunk_size: int = 1 << 20,
    progress: bool = True,
    timeout: float = 30,
    retries: int = 2,
) -> Path:
    """Download ``url`` to ``dest``, resuming, verifying and renaming atomically.

    Bytes go to ``<dest>.part``. If a ``.part`` exists from an interrupted run, the
    download resumes with ``Range: bytes=<len>-``; a server that ignores the range
    (answers 200 instead of 206) is handled by starting over from byte 0. When the
    transfer completes, the size (if ``size``) and SHA-256 (if ``sha256``) are
    checked and the ``.part`` is renamed to ``dest`` in one ``os.replace``: ``dest``
    never holds a partial file. Without ``sha256`` the computed digest is printed so
    that it can be pinned.

    Args:
        url: http(s) URL.
        dest: final path of the file; its folder is created.
        sha256: expected hex SHA-256, or ``None`` to skip the check (the digest is printed).
        size: expected size in bytes, or ``None``.
        chunk_size: bytes per read.
        progress: draw a tqdm bar.
        timeout: seconds for the connection and for each read.
        retries: how many times a dropped connection is resumed automatically before
            giving up (the ``.part`` is kept, so a rerun resumes too).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: offline or unreachable host (the message says how to install the
            file by hand), an HTTP error, an interrupted transfer, or a size/checksum
            mismatch (the ``.part`` is deleted first). An existing ``dest`` that fails
            the checks is reported, not deleted: it may be a file the user placed there.
    """
    dest = Path(dest).expanduser()
    if dest.is_file():
        return _verify_existing(dest, url, sha256, size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + _PART_SUFFIX)
    attempt = 0
    while True:
        try:
            digest = _fetch_into_part(url, part, dest, size=size, chunk_size=chunk_size,
                                      progress=progress, timeout=timeout)
            break
        except _Interrupted as err:
            have = part.stat().st_size if part.exists() else 0
            if attempt >= retries:
                raise DownloadError(
                    f"the download of {url} was interrupted ({err}); {have} bytes are kept in {part}. "
                    f"Rerun the same command to resume where it stopped.") from None
            attempt += 1
            _say(f"connection dropped after {have} bytes ({err}); resuming (retry {attempt} of {retries})")
            time.sleep(min(2.0 ** attempt * 0.25, 5.0))
    return _commit(part, dest, url, digest, sha256, size)


def _verify_existing(dest: Path, url: str, sha256: str | None, size: int | None) -> Path:
    """Accept a complete file already at ``dest`` (a previous run, or placed by hand)."""
    actual_size = dest.stat().st_size
    if size is not None and actual_size != size:
        raise DownloadError(
            f"{dest} exists but has {actual_size} bytes where {size} are expected: it is incomplete "
            f"or a different release. Delete it and rerun to download {url} again, or replace it "
            f"with the official file.")
    digest = sha256_of_file(dest)
    if sha256 is not None and digest != sha256.lower():
        raise DownloadError(
            f"{dest} exists but its checksum does not match:\n  expected SHA-256 {sha256.lower()}\n"
            f"  actual   SHA-256 {digest}\nIt is corrupt or a different release of the file. Delete it "
            f"and rerun to download {url} again, or replace it with the official file.")
    note = "checksum verified" if sha256 else f"SHA-256 {digest} (no published checksum to compare with)"
    _say(f"{dest.name} already downloaded, not fetching it again ({note})")
    return dest


def _open(url: str, dest: Path, headers: dict[str, str], timeout: float,
          part: Path) -> http.client.HTTPResponse:
    """``urlopen`` with network failures turned into messages a user can act on."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, **headers})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) only, checked)
    except urllib.error.HTTPError:
        raise  # the caller decides (416 is part of resuming)
    except urllib.error.URLError as err:
        kept = f" The {part.stat().st_size} bytes already in {part} are kept." if part.exists() else ""
        host = urllib.parse.urlsplit(url).netloc
        if isinstance(err.reason, ssl.SSLError):  # reachable, but TLS failed: not an offline machine
            why = ("the TLS connection failed; the system's CA certificates may be missing or a proxy "
                   "may intercept HTTPS")
        else:
            why = "this machine appears to be offline, or the host is blocked by a firewall/proxy"
        raise DownloadError(
            f"could not reach {host} ({err.reason}): {why}.{kept}\n{_manual_steps(url, dest)}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise _Interrupted(f"{type(err).__name__}: {err}") from None


def _http_error(err: urllib.error.HTTPError, url: str, dest: Path) -> DownloadError:
    moved = (" The link may have moved or expired (MVTec, for one, rotates its share links);"
             " the dataset's page has the current one." if err.code in (401, 403, 404, 410) else "")
    return DownloadError(f"the server answered HTTP {err.code} {err.reason} for {url}.{moved}\n"
                         f"{_manual_steps(url, dest)}")


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+|\*)(?:-(\d+))?/(\d+|\*)")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``Content-Range: bytes 100-199/1000`` -> (100, 1000); unknown parts are ``None``."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) != "*" else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _fetch_into_part(url: str, part: Path, dest: Path, *, size: int | None, chunk_size: int,
                     progress: bool, timeout: float) -> str:
    """Bring ``part`` to the complete file; return its SHA-256 (computed while streaming)."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise DownloadError(f"refusing to download {url!r}: only http:// and https:// URLs are supported")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:  # longer than the whole file: it cannot be a prefix
        part.unlink()
        have = 0
    if size is not None and have == size and have > 0:
        return sha256_of_file(part)  # a previous run got every byte but stopped before the rename

    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = _open(url, dest, headers, timeout, part)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            # Range not satisfiable: our .part is as long as the file (complete) or longer (junk).
            _, total = _parse_content_range(err.headers.get("Content-Range"))
            if total == have:
                return sha256_of_file(part)
            part.unlink()
            return _fetch_into_part(url, part, dest, size=size, chunk_size=chunk_size,
                                    progress=progress, timeout=timeout)
        raise _http_error(err, url, dest) from None

    with response:
        status = response.status
        length_header = response.headers.get("Content-Length") or ""
        length = int(length_header) if length_header.isdigit() else None
        if have and status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != have:  # a range we did not ask for: do not splice it in, start clean
                response.close()
                part.unlink()
                return _fetch_into_part(url, part, dest, size=size, chunk_size=chunk_size,
                                        progress=progress, timeout=timeout)
            if total is None and length is not None:
                total = have + length
            hasher = hashlib.sha256()
            with open(part, "rb") as fh:  # hash the kept prefix once, then keep streaming
                for block in iter(lambda: fh.read(1 << 20), b""):
                    hasher.update(block)
            mode, received = "ab", have
            _say(f"resuming {dest.name} at byte {have}")
        else:
            if have:
                _say(f"the server ignored the resume request (HTTP {status}); restarting {dest.name} from byte 0")
            total, hasher, mode, received = length, hashlib.sha256(), "wb", 0
        expected_total = total if total is not None else size

        bar = tqdm(total=expected_total, initial=received, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=dest.name, disable=not progress, leave=False)
        with open(part, mode) as out, bar:
            while True:
                try:
                    chunk = response.read(chunk_size)
                except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
                    out.flush()
                    raise _Interrupted(f"{type(err).__name__}: {err}") from None
                if not chunk:
                    break
                out.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client ends a body that stops short of Content-Length without an error: check it here.
    if expected_total is not None and received < expected_total:
        raise _Interrupted(f"received {received} of {expected_total} bytes")
    return hasher.hexdigest()


def _commit(part: Path, dest: Path, url: str, digest: str, sha256: str | None, size: int | None) -> Path:
    """Check the finished ``.part`` and rename it to ``dest`` (atomic on one filesystem)."""
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink()
        raise DownloadError(
            f"size mismatch for {url}: expected {size} bytes, got {actual_size}. The partial file was "
            f"deleted; rerun to download it again. If this persists the file on the server changed: "
            f"download it by hand and place it at {dest}.")
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {url}:\n  expected SHA-256 {sha256.lower()}\n  actual   SHA-256 {digest}\n"
            f"The corrupt download was deleted. Rerun to download it again; if the mismatch persists the "
            f"file on the server changed or something on the way (a proxy, a captive portal) altered it: "
            f"download it by hand, check it, and place it at {dest}.")
    os.replace(part, dest)
    if sha256 is None:
        _say(f"downloaded {dest.name}: SHA-256 {digest} (no published checksum to compare with; "
             f"record this value to pin it)")
    else:
        _say(f"downloaded {dest.name}: checksum verified")
    return dest


# --------------------------------------------------------------------------- safe_extract


@dataclass
class _Member:
    """One archive entry, format-independent."""

    name: str                 # as stored in the archive
    kind: str                 # "file", "dir", "symlink", "hardlink" or a rejected kind's description
    link: str | None = None   # symlink target, or hard link target (archive-root relative)
    mode: int = 0o644
    mtime: float | None = None
    ref: object = None        # TarInfo or ZipInfo, for reading the data
    parts: tuple[str, ...] = field(default=())  # validated path inside the target


_DRIVE = re.compile(r"^[A-Za-z]:")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tbz")


def _split_member_path(name: str, member: str, what: str = "path") -> tuple[str, ...]:
    """Path components of an archive name; rejects absolute paths, drive letters, ``..`` and NUL."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"archive member {member!r} has a NUL byte in its {what}", member)
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise UnsafeArchiveError(f"archive member {member!r} has an absolute {what} ({name!r}); "
                                 f"refusing to extract anything", member)
    # Backslashes count as separators too: on Windows "..\\x" climbs out just like "../x".
    parts = tuple(p for p in re.split(r"[\\/]", name) if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member {member!r} has a '..' component in its {what} "
                                 f"({name!r}); refusing to extract anything", member)
    return parts


def _resolve_link(base: tuple[str, ...], link: str, symlinks: dict[tuple[str, ...], str], member: str,
                  depth: int = 0) -> tuple[str, ...]:
    """Where a relative symlink ``link`` in folder ``base`` points, following the archive's own
    symlinks like the OS would; raises if the walk ever leaves the target folder.

    A purely textual check is not enough: with ``b -> .`` in the archive, ``a -> b/../x`` looks
    harmless once normalised (``x``) but the OS resolves ``b`` first and lands outside.
    """
    if depth > 40:
        raise UnsafeArchiveError(f"archive member {member!r}: symlink loop", member)
    if not link or link.startswith(("/", "\\")) or _DRIVE.match(link):
        raise UnsafeArchiveError(f"archive member {member!r} is a symlink to the absolute path {link!r}, "
                                 f"outside the target folder; refusing to extract anything", member)
    stack = list(base)
    for comp in re.split(r"[\\/]", link):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not stack:
                raise UnsafeArchiveError(f"archive member {member!r} is a symlink whose target {link!r} "
                                         f"leaves the target folder; refusing to extract anything", member)
            stack.pop()
            continue
        stack.append(comp)
        if tuple(stack) in symlinks:
            stack = list(_resolve_link(tuple(stack[:-1]), symlinks[tuple(stack)], symlinks, member, depth + 1))
    return tuple(stack)


def _validate(members: list[_Member], subdir: str | None) -> list[_Member]:
    """Check every member; return the ones to write, with ``parts`` relative to the target."""
    strip = _split_member_path(subdir, subdir or "", "subdir") if subdir else ()
    kept: list[_Member] = []
    for m in members:
        parts = _split_member_path(m.name, m.name)
        if m.kind not in ("file", "dir", "symlink", "hardlink"):
            raise UnsafeArchiveError(f"archive member {m.name!r} is a {m.kind}; refusing to extract "
                                     f"anything (only files, folders and links are allowed)", m.name)
        if m.kind == "hardlink":
            _split_member_path(m.link or "", m.name, "hard link target")
        if strip:
            if parts[:len(strip)] != strip or len(parts) == len(strip):
                continue  # outside the wanted subfolder (or the subfolder itself)
            parts = parts[len(strip):]
        if not parts:
            if m.kind == "dir":
                continue  # "./" — the target itself
            raise UnsafeArchiveError(f"archive member {m.name!r} has an empty path", m.name)
        m.parts = parts
        kept.append(m)

    symlinks = {m.parts: m.link or "" for m in kept if m.kind == "symlink"}
    files_so_far: set[tuple[str, ...]] = set()
    for m in kept:
        for i in range(1, len(m.parts)):
            if m.parts[:i] in symlinks:
                raise UnsafeArchiveError(
                    f"archive member {m.name!r} would be written through the symlink "
                    f"{'/'.join(m.parts[:i])!r}; refusing to extract anything", m.name)
        if m.kind == "symlink":
            _resolve_link(m.parts[:-1], m.link or "", symlinks, m.name)
        elif m.kind == "hardlink":
            target = _split_member_path(m.link or "", m.name, "hard link target")
            if strip:
                if target[:len(strip)] != strip:
                    raise UnsafeArchiveError(f"archive member {m.name!r} is a hard link to {m.link!r}, "
                                             f"outside the extracted folder {subdir!r}", m.name)
                target = target[len(strip):]
            if target not in files_so_far:
                raise UnsafeArchiveError(f"archive member {m.name!r} is a hard link to {m.link!r}, which is "
                                         f"not a regular file earlier in the archive", m.name)
            m.link = "/".join(target)
        if m.kind in ("file", "hardlink"):
            files_so_far.add(m.parts)
    return kept


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.isreg():
        kind = "file"
    elif info.isdir():
        kind = "dir"
    elif info.issym():
        kind = "symlink"
    elif info.islnk():
        kind = "hardlink"
    elif info.ischr() or info.isblk():
        kind = "device file"
    elif info.isfifo():
        kind = "FIFO"
    else:
        kind = f"special member (tar type {info.type!r})"
    return _Member(info.name, kind, info.linkname if kind in ("symlink", "hardlink") else None,
                   info.mode, info.mtime, info)


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    unix_mode = (info.external_attr >> 16) & 0xFFFF
    if stat.S_ISLNK(unix_mode):  # unix zip tools store a symlink's target as its content
        return _Member(info.filename, "symlink", zf.read(info).decode("utf-8", "surrogateescape"),
                       0o777, None, info)
    kind = "dir" if info.is_dir() else "file"
    if unix_mode and stat.S_IFMT(unix_mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        kind = "special member (unix mode %o)" % stat.S_IFMT(unix_mode)
    mode = stat.S_IMODE(unix_mode) or 0o644
    mtime = time.mktime(info.date_time + (0, 0, -1)) if info.date_time[0] >= 1980 else None
    return _Member(info.filename, kind, None, mode, mtime, info)


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise DownloadError(f"{archive} is neither a tar nor a zip archive; delete it and download it again")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _write_members(members: list[_Member], target: Path, open_member: Callable[[_Member], IO[bytes]],
                   progress: bool) -> None:
    """Write validated members. Every parent folder is re-checked on disk, so a symlink that
    already existed in ``target`` (not from this archive) cannot redirect a write outside."""
    target.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(target)
    for m in tqdm(members, desc=f"extracting into {target.name}", unit="file", disable=not progress,
                  leave=False):
        dest = target.joinpath(*m.parts)
        if not _inside(os.path.realpath(dest.parent), root):
            raise UnsafeArchiveError(f"archive member {m.name!r} would be written outside {target} through "
                                     f"an existing symlink at {dest.parent}", m.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if m.kind == "dir":
            if os.path.islink(dest):
                dest.unlink()
            dest.mkdir(exist_ok=True)
            continue
        if os.path.lexists(dest):  # replace files and links, never write through them
            if dest.is_dir() and not dest.is_symlink():
                raise DownloadError(f"cannot extract {m.name!r}: {dest} is a folder")
            dest.unlink()
        if m.kind == "symlink":
            os.symlink(m.link or "", dest)
        elif m.kind == "hardlink":
            source = target.joinpath(*(m.link or "").split("/"))
            try:
                os.link(source, dest)
            except OSError:  # filesystems without hard links
                shutil.copy2(source, dest)
        else:
            with open_member(m) as src, open(dest, "xb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            # Keep the read/execute bits, never setuid/sticky; make sure the owner can read and write.
            os.chmod(dest, (m.mode & 0o755) | 0o600)
            if m.mtime is not None:
                os.utime(dest, (m.mtime, m.mtime))


def safe_extract(archive: str | Path, target: str | Path, *, subdir: str | None = None,
                 progress: bool = False) -> list[str]:
    """Extract a tar (any compression) or zip archive into ``target``, safely.

    All members are validated before anything is written; the archive is rejected as
    a whole (and nothing is written, not even ``target``) if any member

    - has an absolute path (``/x``, ``C:\\x``) or a ``..`` component,
    - is a symlink whose target, followed through the archive's own symlinks, leaves
      ``target`` (or is absolute), or a member that would be written through a symlink,
    - is a hard link to anything but a regular file earlier in the archive,
    - is a device file, FIFO or other special member.

    This does not rely on ``tarfile``'s ``filter=`` (Python 3.11.4+ only); members are
    written by this function, never through a link. Permissions keep only the
    read/write/execute bits.

    Args:
        archive: the archive; the format comes from its suffix, else from its content.
        target: folder to extract into (created).
        subdir: extract only this folder of the archive, with its contents placed directly
            in ``target``; ``None`` extracts everything as laid out.
        progress: draw a tqdm bar over the members.

    Returns:
        POSIX paths, relative to ``target``, of the members written, in archive order.

    Raises:
        UnsafeArchiveError: naming the offending member (nothing written).
        DownloadError: the file is not a readable archive, or writing failed.
    """
    archive = Path(archive).expanduser()
    target = Path(target).expanduser()
    kind = _archive_kind(archive)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                plan = _validate([_zip_member(zf, i) for i in zf.infolist()], subdir)
                _write_members(plan, target, lambda m: zf.open(m.ref), progress)
        else:
            with tarfile.open(archive, "r:*") as tf:
                # getmembers() reads the whole index (one decompression pass) so that every member
                # is validated before the first byte is written.
                plan = _validate([_tar_member(i) for i in tf.getmembers()], subdir)
                _write_members(plan, target, lambda m: _tar_reader(tf, m), progress)
    except DownloadError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise DownloadError(
            f"extracting {archive} into {target} failed: {type(err).__name__}: {err}. If the archive is "
            f"corrupt, delete it and rerun to download it again; also check the free disk space.") from err
    return ["/".join(m.parts) for m in plan]


def _tar_reader(tf: tarfile.TarFile, m: _Member) -> IO[bytes]:
    reader = tf.extractfile(m.ref)  # type: ignore[arg-type]
    if reader is None:
        raise DownloadError(f"cannot read archive member {m.name!r}")
    return reader


# --------------------------------------------------------------------------- download_dataset


def _mirror_url(base_url: str, relpath: str) -> str:
    return base_url.rstrip("/") + "/" + urllib.parse.quote(relpath)


def _check_layout(source: DatasetSource, root: Path, archive: Path) -> None:
    missing = [d for d in source.required_dirs if not (root / d).is_dir()]
    if not missing:
        return
    found = sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []
    raise DownloadError(
        f"after extracting {archive.name}, {len(missing)} of the {len(source.required_dirs)} expected "
        f"{source.name} category folders are missing from {root}: {', '.join(missing)}.\n"
        f"Top-level entries found: {', '.join(found) or '(none)'}.\n"
        f"The archive is not the official release or has another layout. Delete {archive} and rerun, "
        f"or extract the official archive by hand so that {root}/<category>/ exists for every category.")


def download_dataset(
    name: str,
    root: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    base_url: str | None = None,
    source: DatasetSource | None = None,
) -> Path:
    """Download, verify and extract a benchmark into ``root``; skip it when already done.

    Steps: (1) fetch the archive into ``<root>/.downloads/`` (resumable, checksummed),
    and each extra file (VisA's ``split_csv/1cls.csv``); every network access happens
    before anything is extracted; (2) :func:`safe_extract` the archive into ``root``;
    (3) put the extra files in place (an extra file that could not be fetched is only
    an error if the archive did not ship it either); (4) check that every category
    folder exists; (5) write the marker ``<root>/.vtfusion_<name>_ok``. When the marker
    exists the call returns at once, unless ``force``.

    The archive is kept in ``.downloads`` (delete it to free the space once the data is
    in place). Offline? Copy the archive to ``<root>/.downloads/<filename>`` and rerun:
    only verification and extraction happen.

    Args:
        name: ``"mvtec"`` or ``"visa"`` (see :data:`SOURCES`).
        root: dataset root; ``root/<category>/...`` after extraction.
        force: ignore the marker: verify and extract again. A downloaded file that passes
            its published checksum is reused (the checksum proves it is the same file);
            files without a published checksum are fetched again.
        progress: draw tqdm bars.
        base_url: a mirror serving the same files by name: the archive at
            ``<base_url>/<filename>`` and each extra file at ``<base_url>/<dest>``.
            The published checksums still apply.
        source: use this :class:`DatasetSource` instead of the registry entry for ``name``
            (a repacked archive, tests); ``name`` still names the marker.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones).
        DownloadError: offline, HTTP error, checksum mismatch, unsafe or corrupt archive,
            or category folders missing after extraction; the message says what to do.
    """
    src = source if source is not None else dataset_source(name)
    root = Path(root).expanduser()
    marker = marker_path(name, root)
    if marker.is_file() and not force:
        _say(f"{name} is already in {root} ({marker.name} found); nothing to do (force=True redoes it)")
        return root

    downloads = root / DOWNLOADS_DIRNAME
    archive_url = _mirror_url(base_url, src.filename) if base_url else src.url
    archive = downloads / src.filename
    hint = (f"Dataset page (current links, licence): {src.homepage}" if src.homepage else "")
    if src.license:
        _say(f"{name}: data licence {src.license}")
    try:
        download_file(archive_url, archive, sha256=src.sha256, size=src.size, progress=progress)
    except DownloadError as err:
        raise DownloadError(f"{err}\n{hint}" if hint else str(err)) from err
    extras: list[tuple[ExtraFile, Path]] = []
    failed_extras: list[tuple[ExtraFile, DownloadError]] = []
    for extra in src.extra_files:
        cached = downloads / "extra" / Path(*_split_member_path(extra.dest, extra.dest, "dest"))
        if force and extra.sha256 is None and cached.is_file():
            cached.unlink()  # nothing to verify it against: fetch it again
        url = _mirror_url(base_url, extra.dest) if base_url else extra.url
        try:
            download_file(url, cached, sha256=extra.sha256, progress=False)
            extras.append((extra, cached))
        except DownloadError as err:  # decided after extraction: the archive may ship the same file
            failed_extras.append((extra, err))

    marker.unlink(missing_ok=True)  # force: the data is not known-good until the end
    _say(f"extracting {archive.name} into {root} (validating every member first)")
    written = safe_extract(archive, root, subdir=src.extract_subdir, progress=progress)
    for extra, cached in extras:
        dest = root.joinpath(*_split_member_path(extra.dest, extra.dest, "dest"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, dest)
    for extra, err in failed_extras:
        if not root.joinpath(*_split_member_path(extra.dest, extra.dest, "dest")).is_file():
            raise DownloadError(f"{err}\n{hint}" if hint else str(err)) from err
        # VisA's archive carries split_csv/1cls.csv itself: an offline install still completes.
        _say(f"could not fetch {extra.url}; using the copy of {extra.dest} shipped in {archive.name} "
             f"({str(err).splitlines()[0]})")
    _check_layout(src, root, archive)
    info = {
        "name": name,
        "url": archive_url,
        "archive": str(archive),
        "sha256": src.sha256,
        "files_extracted": len(written),
        "extra_files": [e.dest for e, _ in extras],
        "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(marker, info)
    _say(f"{name} is ready in {root} ({len(written)} files); the archive stays in {downloads} "
         f"(delete it to free the space)")
    return root
