"""The merge lock: a second holder is refused, naming the first; a leftover file does not block."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_r1v.merge.errors import MergeError
from tiny_r1v.merge.lock import exclusive, lock_path


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    out = tmp_path / "merged"
    with exclusive(out):
        assert lock_path(out).read_text().startswith(f"pid {os.getpid()} on ")
        # flock locks belong to the open file, so a second open in this process contends too.
        with pytest.raises(MergeError, match=f"another merge is writing {out} \\(pid {os.getpid()} on "):
            with exclusive(out):
                pass
    assert not lock_path(out).exists()
    with exclusive(out):  # free again
        pass


def test_a_leftover_lock_file_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "merged"
    lock_path(out).write_text("pid 1 on a machine that died")
    with exclusive(out):
        assert lock_path(out).read_text().startswith(f"pid {os.getpid()} ")
    assert not lock_path(out).exists()
