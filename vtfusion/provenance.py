"""Provenance: which code produced a result (the git commit of the checkout, read-only)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vtfusion import paths


def git_commit() -> str | None:
    """``HEAD`` of the project checkout (``+dirty`` with uncommitted changes), or None.

    Read-only: ``git status`` and even ``git diff`` refresh and rewrite ``.git/index``
    (racing the user's own git commands on every evaluated cell), so only plumbing runs,
    with ``GIT_OPTIONAL_LOCKS=0``: see :func:`_checkout_dirty`.
    """
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=paths.PROJECT_ROOT,
                              capture_output=True, text=True, timeout=10, env=env)
        if head.returncode != 0:
            return None
        top, commit = head.stdout.strip().splitlines()
        return commit + ("+dirty" if _checkout_dirty(Path(top), env) else "")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _checkout_dirty(top: Path, env: dict[str, str]) -> bool:
    """Whether tracked files differ from ``HEAD``, without writing the index.

    Staged changes: ``diff --cached`` (index vs HEAD, no stat refresh). Worktree:
    ``diff-files`` lists files whose stat differs from the index, which includes files
    merely touched; their content is hashed (``hash-object``, nothing written) and
    compared with the index's blob.
    """
    def git(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=top, capture_output=True, text=True, timeout=30, env=env,
                              input=stdin)

    if git("diff", "--cached", "--quiet").returncode != 0:
        return True
    changed = [f for f in git("diff-files", "--name-only", "-z").stdout.split("\0") if f]
    if not changed:
        return False
    if any(not (top / f).is_file() for f in changed):  # deleted (or replaced by a folder)
        return True
    staged = {}
    for entry in git("ls-files", "-s", "-z", "--", *changed).stdout.split("\0"):
        if entry:
            meta, name = entry.split("\t", 1)
            staged[name] = meta.split()[1]
    hashed = git("hash-object", "--stdin-paths", stdin="\n".join(changed)).stdout.split()
    return hashed != [staged.get(f) for f in changed]
