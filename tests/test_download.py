"""Downloads against a local HTTP server (127.0.0.1 only): resume, checksums, safe extraction.

The server supports Range requests, can ignore them, and can cut a transfer after N
bytes to simulate a dropped connection; it logs every request so tests can assert what
went over the wire.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vtfusion.data.categories import MVTEC_AD_CATEGORIES, VISA_CATEGORIES
from vtfusion.data.download import (
    DOWNLOADS_DIRNAME,
    SOURCES,
    DownloadError,
    UnsafeArchiveError,
    download_dataset,
    download_file,
    marker_path,
    safe_extract,
)

pytestmark = pytest.mark.network


# --------------------------------------------------------------------------- local server


class _Handler(BaseHTTPRequestHandler):
    server: "_FileServer"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        path = self.path.split("?", 1)[0]
        data = srv.files.get(path)
        entry = {"path": path, "range": self.headers.get("Range"), "status": 404, "sent": 0}
        srv.log.append(entry)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honor_range and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes="):-1])
        if start >= len(data) and start > 0:
            entry["status"] = 416
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        if start:
            entry["status"] = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            entry["status"] = 200
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes" if srv.honor_range else "none")
        self.end_headers()
        if srv.cut_after is not None:  # one-shot: drop the connection after N body bytes
            body, srv.cut_after = body[:srv.cut_after], None
        # recorded before writing: the client can finish reading before this thread runs on
        entry["sent"] = len(body)
        self.wfile.write(body)
        self.wfile.flush()


class _FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.log: list[dict] = []
        self.honor_range = True
        self.cut_after: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server(monkeypatch):
    # A proxy from the environment must not swallow requests to 127.0.0.1.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = _FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload(n: int = 300_000) -> bytes:
    # Not a repeating pattern, so a wrongly spliced resume changes the digest.
    return hashlib.shake_256(b"vtfusion").digest(n)


# --------------------------------------------------------------------------- archives


def _tar_bytes(entries: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tf.addfile(e)
            else:
                name, data = e
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _zip_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def _all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------- download_file


def test_download_success_and_no_second_fetch(server, tmp_path):
    data = _payload()
    server.files["/a.bin"] = data
    dest = tmp_path / "dl" / "a.bin"
    out = download_file(f"{server.url}/a.bin", dest, sha256=_sha(data), size=len(data), progress=False)
    assert out == dest and dest.read_bytes() == data
    assert not dest.with_name("a.bin.part").exists()
    assert len(server.log) == 1 and server.log[0]["range"] is None
    # Already complete and matching: verified locally, not downloaded again.
    download_file(f"{server.url}/a.bin", dest, sha256=_sha(data), progress=False)
    assert len(server.log) == 1


def test_resume_after_interruption_uses_range(server, tmp_path):
    data = _payload()
    cut = 123_457
    server.files["/a.bin"] = data
    server.cut_after = cut
    dest = tmp_path / "a.bin"
    part = tmp_path / "a.bin.part"
    with pytest.raises(DownloadError, match="interrupted") as err:
        download_file(f"{server.url}/a.bin", dest, sha256=_sha(data), progress=False, retries=0)
    assert "resume" in str(err.value)
    assert not dest.exists() and part.stat().st_size == cut
    download_file(f"{server.url}/a.bin", dest, sha256=_sha(data), progress=True, retries=0)
    assert dest.read_bytes() == data and not part.exists()
    second = server.log[1]
    assert second["range"] == f"bytes={cut}-" and second["status"] == 206
    assert second["sent"] == len(data) - cut  # only the remainder travelled


def test_dropped_connection_is_resumed_automatically(server, tmp_path):
    data = _payload()
    server.files["/a.bin"] = data
    server.cut_after = 50_000
    dest = tmp_path / "a.bin"
    download_file(f"{server.url}/a.bin", dest, sha256=_sha(data), progress=False, retries=1)
    assert dest.read_bytes() == data
    assert [e["range"] for e in server.log] == [None, "bytes=50000-"]


def test_complete_part_is_committed_without_refetching(server, tmp_path):
    data = _payload(20_000)
    server.files["/a.bin"] = data
    (tmp_path / "a.bin.part").write_bytes(data)  # every byte arrived, the rename did not happen
    download_file(f"{server.url}/a.bin", tmp_path / "a.bin", sha256=_sha(data), progress=False)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert server.log[0]["status"] == 416 and server.log[0]["sent"] == 0


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = _payload()
    server.files["/a.bin"] = data
    server.honor_range = False
    dest = tmp_path / "a.bin"
    # A stale .part that is NOT a prefix of the file: appending to it would corrupt the result.
    (tmp_path / "a.bin.part").write_bytes(b"x" * 1000)
    download_file(f"{server.url}/a.bin", dest, sha256=_sha(data), progress=False)
    assert dest.read_bytes() == data
    assert server.log[0]["range"] == "bytes=1000-" and server.log[0]["status"] == 200
    assert server.log[0]["sent"] == len(data)


def test_checksum_failure_leaves_nothing(server, tmp_path):
    data = _payload(10_000)
    server.files["/a.bin"] = data
    dest = tmp_path / "a.bin"
    wrong = "0" * 64
    url = f"{server.url}/a.bin"
    with pytest.raises(DownloadError) as err:
        download_file(url, dest, sha256=wrong, progress=False)
    msg = str(err.value)
    assert url in msg and wrong in msg and _sha(data) in msg and "Rerun" in msg
    assert not dest.exists() and not (tmp_path / "a.bin.part").exists()


def test_existing_file_with_wrong_checksum_is_reported_not_deleted(server, tmp_path):
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"placed by hand, but wrong")
    with pytest.raises(DownloadError, match="does not match"):
        download_file(f"{server.url}/a.bin", dest, sha256="0" * 64, progress=False)
    assert dest.exists() and server.log == []


def test_unknown_checksum_prints_digest(server, tmp_path, capsys):
    data = _payload(5_000)
    server.files["/a.csv"] = data
    download_file(f"{server.url}/a.csv", tmp_path / "a.csv", progress=False)
    assert _sha(data) in capsys.readouterr().out


def test_http_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download_file(f"{server.url}/missing.tar", tmp_path / "missing.tar", progress=False)
    assert str(tmp_path / "missing.tar") in str(err.value)


def test_offline_message(tmp_path):
    with socket.socket() as s:  # a port that was just free and is now closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "x.tar"
    url = f"http://127.0.0.1:{port}/x.tar"
    with pytest.raises(DownloadError) as err:
        download_file(url, dest, progress=False, timeout=5)
    msg = str(err.value)
    assert "offline" in msg and url in msg and str(dest) in msg and "rerun" in msg
    assert not dest.exists()


# --------------------------------------------------------------------------- safe_extract


@pytest.mark.parametrize("suffix", ["tar.gz", "zip"])
def test_safe_extract_success(tmp_path, suffix):
    entries = [("pkg/a.txt", b"alpha"), ("pkg/sub/b.txt", b"beta"), ("top.txt", b"top")]
    archive = tmp_path / f"good.{suffix}"
    archive.write_bytes(_zip_bytes(entries) if suffix == "zip" else _tar_bytes(entries))
    written = safe_extract(archive, tmp_path / "root")
    assert written == ["pkg/a.txt", "pkg/sub/b.txt", "top.txt"]
    for name, data in entries:
        assert (tmp_path / "root" / name).read_bytes() == data


def test_safe_extract_subdir_and_internal_symlink(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_bytes([("wrap/x/f.txt", b"f"), _link("wrap/x/g.txt", "f.txt"), ("other.txt", b"o")]))
    safe_extract(archive, tmp_path / "root", subdir="wrap")
    assert (tmp_path / "root" / "x" / "g.txt").read_bytes() == b"f"  # a link inside the root is fine
    assert not (tmp_path / "root" / "other.txt").exists() and not (tmp_path / "root" / "wrap").exists()


def _device() -> tarfile.TarInfo:
    info = tarfile.TarInfo("dev/null-ish")
    info.type = tarfile.CHRTYPE
    return info


UNSAFE_TARS = {
    "traversal": ([("ok.txt", b"ok"), ("../evil.txt", b"evil")], "../evil.txt"),
    "nested-traversal": ([("ok.txt", b"ok"), ("a/../../evil.txt", b"evil")], "a/../../evil.txt"),
    "absolute": ([("ok.txt", b"ok"), ("/ABS/evil.txt", b"evil")], "/ABS/evil.txt"),
    "symlink-escape": ([("ok.txt", b"ok"), _link("link", "../outside"), ("link/evil.txt", b"evil")], "link"),
    "symlink-absolute": ([("ok.txt", b"ok"), _link("link", "/ABS")], "link"),
    "symlink-through-symlink": ([_link("b", "."), _link("a", "b/../evil")], "a"),
    "hardlink-escape": ([("ok.txt", b"ok"), _link("h", "../outside.txt", tarfile.LNKTYPE)], "h"),
    "device": ([("ok.txt", b"ok"), _device()], "dev/null-ish"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_TARS))
def test_unsafe_tar_is_rejected_and_writes_nothing(tmp_path, case):
    entries, bad = UNSAFE_TARS[case]
    outside = tmp_path / "outside"  # absolute members point here, so an escape would be visible
    outside.mkdir()

    def fix(e):
        if isinstance(e, tarfile.TarInfo):
            e = copy.copy(e)  # the table is shared between runs: do not edit it
            e.linkname = e.linkname.replace("/ABS", str(outside))
            return e
        return (e[0].replace("/ABS", str(outside)), e[1])

    entries = [fix(e) for e in entries]
    bad = bad.replace("/ABS", str(outside))
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar_bytes(entries))
    before = _all_files(tmp_path)
    target = tmp_path / "work" / "root"
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, target)
    assert err.value.member.lstrip("/") == bad.lstrip("/") and repr(bad)[1:-1] in str(err.value)
    assert _all_files(tmp_path) == before  # nothing outside, and not even the target folder
    assert not target.exists()


def test_unsafe_zip_is_rejected(tmp_path):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip_bytes([("ok.txt", b"ok"), ("../evil.txt", b"evil")]))
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil\.txt"):
        safe_extract(archive, tmp_path / "root")
    assert not (tmp_path / "root").exists() and not (tmp_path / "evil.txt").exists()


def test_existing_symlink_in_target_cannot_redirect_writes(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "root"
    target.mkdir()
    (target / "pkg").symlink_to(outside)  # left behind by something else
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_bytes([("pkg/a.txt", b"alpha")]))
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, target)
    assert list(outside.iterdir()) == []


# --------------------------------------------------------------------------- download_dataset


def _fake_mvtec(categories=MVTEC_AD_CATEGORIES) -> bytes:
    entries: list = [("license.txt", b"CC BY-NC-SA 4.0")]
    for c in categories:
        entries += [(f"{c}/train/good/000.png", c.encode()), (f"{c}/test/good/000.png", c.encode())]
    return _tar_bytes(entries, mode="w:xz")


def test_download_dataset_end_to_end_then_skips(server, tmp_path):
    data = _fake_mvtec()
    server.files["/mvtec_anomaly_detection.tar.xz"] = data
    # The registry entry, with this archive's checksum (the real one is pinned to the real file).
    source = dataclasses.replace(SOURCES["mvtec"], sha256=_sha(data))
    root = tmp_path / "mvtec_ad"
    out = download_dataset("mvtec", root, progress=False, base_url=server.url, source=source)
    assert out == root
    for c in MVTEC_AD_CATEGORIES:
        assert (root / c / "train" / "good" / "000.png").read_bytes() == c.encode()
    assert (root / DOWNLOADS_DIRNAME / "mvtec_anomaly_detection.tar.xz").is_file()
    assert marker_path("mvtec", root).is_file()
    assert len(server.log) == 1
    download_dataset("mvtec", root, progress=False, base_url=server.url, source=source)
    assert len(server.log) == 1  # marker found: no request, no extraction
    # force re-extracts from the verified archive without fetching it again
    (root / "bottle" / "train" / "good" / "000.png").unlink()
    download_dataset("mvtec", root, progress=False, base_url=server.url, source=source, force=True)
    assert (root / "bottle" / "train" / "good" / "000.png").exists() and len(server.log) == 1


def test_download_dataset_missing_categories(server, tmp_path):
    data = _fake_mvtec(MVTEC_AD_CATEGORIES[:-2])
    server.files["/mvtec_anomaly_detection.tar.xz"] = data
    source = dataclasses.replace(SOURCES["mvtec"], sha256=_sha(data))
    root = tmp_path / "mvtec_ad"
    with pytest.raises(DownloadError, match="missing") as err:
        download_dataset("mvtec", root, progress=False, base_url=server.url, source=source)
    assert all(c in str(err.value) for c in MVTEC_AD_CATEGORIES[-2:])
    assert not marker_path("mvtec", root).exists()


def test_download_dataset_visa_fetches_split_csv(server, tmp_path):
    entries = [(f"{c}/Data/Images/Normal/0000.JPG", b"jpg") for c in VISA_CATEGORIES]
    archive = _tar_bytes(entries, mode="w")
    csv = b"object,split,label,image,mask\ncandle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
    server.files["/VisA_20220922.tar"] = archive
    server.files["/split_csv/1cls.csv"] = csv
    source = dataclasses.replace(SOURCES["visa"], sha256=_sha(archive))
    root = tmp_path / "visa"
    download_dataset("visa", root, progress=False, base_url=server.url, source=source)
    assert (root / "split_csv" / "1cls.csv").read_bytes() == csv
    assert (root / "candle" / "Data" / "Images" / "Normal" / "0000.JPG").is_file()
    assert marker_path("visa", root).is_file()


def test_download_dataset_visa_falls_back_to_csv_in_archive(server, tmp_path):
    csv = b"object,split,label,image,mask\n"
    entries = [(f"{c}/Data/Images/Normal/0000.JPG", b"jpg") for c in VISA_CATEGORIES]
    archive = _tar_bytes(entries + [("split_csv/1cls.csv", csv)], mode="w")
    server.files["/VisA_20220922.tar"] = archive  # the CSV itself is not served (404)
    source = dataclasses.replace(SOURCES["visa"], sha256=_sha(archive))
    root = tmp_path / "visa"
    download_dataset("visa", root, progress=False, base_url=server.url, source=source)
    assert (root / "split_csv" / "1cls.csv").read_bytes() == csv and marker_path("visa", root).is_file()
    # Without a copy in the archive, the failed fetch is an error and no marker is written.
    archive = _tar_bytes(entries, mode="w")
    server.files["/VisA_20220922.tar"] = archive
    source = dataclasses.replace(source, sha256=_sha(archive))
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_dataset("visa", tmp_path / "visa2", progress=False, base_url=server.url, source=source)
    assert not marker_path("visa", tmp_path / "visa2").exists()


def test_download_dataset_offline_names_manual_path(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "mvtec_ad"
    with pytest.raises(DownloadError) as err:
        download_dataset("mvtec", root, progress=False, base_url=f"http://127.0.0.1:{port}")
    msg = str(err.value)
    assert "offline" in msg and str(root / DOWNLOADS_DIRNAME / "mvtec_anomaly_detection.tar.xz") in msg
    assert "mvtec.com" in msg  # where a human gets the current link


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="mvtec.*visa"):
        download_dataset("imagenet", tmp_path)


def test_registry_entries():
    mvtec, visa = SOURCES["mvtec"], SOURCES["visa"]
    assert mvtec.filename == "mvtec_anomaly_detection.tar.xz" and mvtec.url.endswith(mvtec.filename)
    assert visa.filename == "VisA_20220922.tar" and visa.url.endswith(visa.filename)
    for s in (mvtec, visa):
        assert s.sha256 is not None and len(s.sha256) == 64 and int(s.sha256, 16) >= 0
    assert [e.dest for e in visa.extra_files] == ["split_csv/1cls.csv"]
    assert "amazon-science/spot-diff" in visa.extra_files[0].url
    assert len(mvtec.required_dirs) == 15 and len(visa.required_dirs) == 12
