"""One merge at a time per output: a second merge into the same output stops at once.

Two merges writing one output would share its temporary directory and journal (the same path on
every run, so that a killed merge continues) and interleave their shards. The guard is an
advisory ``flock`` on ``<output>.merge-lock``, held for the whole merge: the kernel drops it when
the holder exits, SIGKILL included, so a killed merge never leaves a lock behind that blocks its
own continuation. Works across processes of one machine and on file systems with working
``flock`` (local disks, NFSv4); the lock file names its holder for the error message.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tiny_r1v.merge.errors import MergeError


def lock_path(output: Path) -> Path:
    return output.with_name(f"{output.name}.merge-lock")


@contextmanager
def exclusive(output: Path) -> Iterator[None]:
    """Hold the merge lock of `output`; MergeError naming the holder when another merge has it."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 256).decode(errors="replace").strip() or "an unknown process"
            os.close(fd)
            raise MergeError(
                f"another merge is writing {output} ({holder} holds {path}); wait for it to finish, "
                "or choose another output"
            ) from None
        # The holder before us may have removed the file after we opened it: lock the file at the path.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
