"""One writer per session: an exclusive ``flock`` on ``session.lock`` in the session folder, held for the
whole run.

The kernel drops a ``flock`` when its process dies (also on SIGKILL), so a dead holder never blocks: its
lock file is only a note (pid, host, time, command) for the message, and the next run takes it over and
says so. A second live writer is refused with a message naming the holder. The file descriptor is not
inherited by child processes (Python opens files close-on-exec), so no child can keep the lock alive.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from contracts.session import now_iso

LOCK_FILE = "session.lock"


class SessionLocked(RuntimeError):
    """Another live process is writing this session."""


class SessionLock:
    """``with SessionLock(folder) as lock:`` or ``lock = SessionLock(folder).acquire()`` ... ``lock.release()``.

    ``taken_over`` holds the note of a previous holder that died without releasing (None otherwise).
    """

    def __init__(self, folder: os.PathLike | str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None
        self._made: list[Path] = []
        self.taken_over: dict | None = None

    def acquire(self) -> "SessionLock":
        # the folders made here (session, experiment, data root) are removed again on release if still empty
        self._made = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # the file can be replaced between open and flock: then try the new one
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise SessionLocked(f"{self.folder} is being written by another process ({_describe(_read_note(self.path))}); "
                                    f"refusing a second writer. Wait for it to end, or stop it; a dead process "
                                    f"never holds the lock") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed by its holder meanwhile: lock the current file instead
                os.close(fd)
                continue
            old = _read_note(self.path)
            self.taken_over = old or None
            note = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso(), "command": " ".join(sys.argv)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(note) + "\n").encode(), 0)
            os.fsync(fd)
            self._fd = fd
            return self
        raise SessionLocked(f"{self.path}: could not take the lock (the file keeps being replaced)")

    def release(self) -> None:
        """Drop the lock; remove the note (and the folder, when nothing else was ever written there)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding the lock, so nobody holds a lock on a removed file
            for made in self._made:  # rmdir only succeeds when empty: a refused new session leaves nothing behind
                try:
                    made.rmdir()
                except OSError:
                    break
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "SessionLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_note(path: Path) -> dict:
    try:
        note = json.loads(path.read_text(encoding="utf-8") or "{}")
        return note if isinstance(note, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(note: dict) -> str:
    if not note:
        return "holder unknown"
    return f"pid {note.get('pid')} on host {note.get('host')} since {note.get('since')}: {note.get('command', '?')}"


def describe_holder(note: dict | None) -> str:
    """Human-readable holder of a lock note, for messages."""
    return _describe(note or {})
