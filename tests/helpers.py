"""Builders and checks shared by test modules (importable as ``helpers``: pytest puts ``tests/``
on ``sys.path`` for its root ``conftest.py``)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (a file root counts as itself), keyed by path; the
    set of keys shows files added or removed."""
    digests = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests
