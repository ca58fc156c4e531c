"""Atomic writes: a result file is either complete or absent, never half-written.

Files are published with the mode an ordinary ``open()`` would give (``0666`` minus the
umask: ``0644`` under the usual ``022``), not the ``0600`` of :func:`tempfile.mkstemp`, so
results, checkpoints and caches stay readable by the group and by other tools. JSON is
written strictly (no bare ``NaN``): see :func:`json_ready`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def current_umask() -> int:
    """The process umask, read without changing it where ``/proc`` allows (thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: the classic read-and-restore
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would make every output private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _non_finite_reason(value: float) -> str:
    return "NaN (undefined)" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def json_ready(data: Any) -> Any:
    """A copy of ``data`` that strict JSON parsers accept: every NaN or infinity becomes ``null``.

    When ``data`` is a dict, each replaced value is explained in its ``null_reasons``
    (``{"metrics.image_auroc": "NaN (undefined)"}``: dotted path -> reason), so a reader can
    tell an undefined metric from a missing one without the values' own dicts changing keys.
    """
    reasons: dict[str, str] = {}

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            reasons[where] = _non_finite_reason(value)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    cleaned = clean(data, "")
    if reasons and isinstance(cleaned, dict):
        cleaned["null_reasons"] = {**(cleaned.get("null_reasons") or {}), **reasons}
    return cleaned


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented, strict JSON atomically (NaN/inf -> null, see :func:`json_ready`)."""
    return atomic_write_text(path, json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n")


# --- a lock file per folder --------------------------------------------------------------

class LockTimeout(TimeoutError):
    """Another live process held a lock for longer than the caller was willing to wait."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    return True


def lock_is_stale(lock: Path, stale_after: float) -> bool:
    """Whether ``lock`` was left behind: its process (on this host) is gone, or it has not
    been refreshed for ``stale_after`` seconds (a holder refreshes it while it works)."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > stale_after:
        return True
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return False  # gone, or being written by its holder right now: judged by age alone
    if not isinstance(owner, dict):
        return False
    pid = owner.get("pid")
    return owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


def _try_create(lock: Path, token: str) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask applies
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "token": token,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, fh)
    return True


def _holds(lock: Path, token: str) -> bool:
    try:
        return json.loads(lock.read_text()).get("token") == token
    except (OSError, ValueError, AttributeError):
        return False


def _break_stale(lock: Path, stale_after: float) -> None:
    """Move a stale lock aside (a rename: of several breakers only one wins) and delete it."""
    aside = lock.with_name(f"{lock.name}.stale.{uuid.uuid4().hex}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    if not lock_is_stale(aside, stale_after):  # another breaker's fresh lock was moved: put it back
        with contextlib.suppress(OSError):
            os.link(aside, lock)
    aside.unlink(missing_ok=True)


@contextmanager
def file_lock(lock: str | Path, stale_after: float = 600.0, poll: float = 0.5, timeout: float | None = None,
              on_wait: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Hold ``lock`` (a file created exclusively) for the block; wait while another holds it.

    The file records the holder's pid and host and is touched every ``stale_after / 4``
    seconds while held; a lock whose process on this host is gone, or that went
    ``stale_after`` seconds without a touch, is stale and is taken over. ``on_wait(lock)``
    is called once when the caller has to wait; ``timeout`` (seconds, None: no limit)
    raises :class:`LockTimeout`.
    """
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    start, waited, token = time.monotonic(), False, uuid.uuid4().hex
    while not _try_create(lock, token):
        if lock_is_stale(lock, stale_after):
            _break_stale(lock, stale_after)
            continue
        if timeout is not None and time.monotonic() - start > timeout:
            raise LockTimeout(f"{lock} is held by another run ({lock.read_text() if lock.exists() else '?'}) "
                              f"for more than {timeout:.0f}s; wait for it, or delete the file if no run is active")
        if not waited and on_wait is not None:
            on_wait(lock)
        waited = True
        time.sleep(poll)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(stale_after / 4):
            try:
                os.utime(lock)
            except OSError:
                return

    beat = threading.Thread(target=heartbeat, name=f"lock {lock.name}", daemon=True)
    beat.start()
    try:
        yield lock
    finally:
        stop.set()
        beat.join()
        if _holds(lock, token):  # never delete a lock that another run took over meanwhile
            lock.unlink(missing_ok=True)
