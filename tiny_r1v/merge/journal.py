"""The journal of a merge in progress, so a killed merge continues where it stopped.

It lives in the temporary output directory (`<output>.merge-tmp/merge_journal.jsonl`): a first
line with the key (the settings that decide the result and each input file's identity), then one
line per finished output shard: its file, its size, how many plan items it completes and their
report entries. A shard is journaled only once its file is fsynced, so a journaled shard is whole;
a torn last line (a kill while appending) is dropped. The unit is the shard, not the tensor: a
shard's header is laid out before its tensors are written, so a shard file is either finished or
rewritten from its start, and the journal stays one line per `shard_size_mb` of output.

Resuming (the same command run again) needs an equal key and every journaled shard at its
recorded size; anything else in the directory (the shard being written when the merge died) is
rewritten. A different key is refused, naming what changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiny_r1v.merge.errors import MergeError

JOURNAL = "merge_journal.jsonl"
START_OVER = "to start over, remove {tmp} or pass restart=true"


@dataclass(frozen=True)
class Progress:
    """What an interrupted merge left finished."""

    shards: int = 0
    """Output shards on disk (the first `shards` of the plan)."""
    items: int = 0
    """Plan items those shards complete (tensors and the tied entries among them)."""
    report: list[dict[str, Any]] = field(default_factory=list)
    """The report entries of those items, as the interrupted merge recorded them."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """The journal's shard lines, carried into the continued journal."""


def differences(old: Any, new: Any, key: str = "") -> list[str]:
    """`key: old -> new` for every leaf where two JSON-like values differ (pure)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return [
            line
            for name in sorted({*old, *new}, key=str)
            for line in differences(
                old.get(name, "(absent)"), new.get(name, "(absent)"), f"{key}.{name}" if key else name
            )
        ]
    return [] if old == new else [f"{key}: {old} -> {new}"]


def _lines(tmp: Path) -> tuple[Any, list[bytes]]:
    """The journal's recorded key and its shard lines; MergeError when `tmp` holds none."""
    path = tmp / JOURNAL
    lines = path.read_bytes().split(b"\n") if path.is_file() else []
    try:
        return json.loads(lines[0])["key"], lines[1:]
    except (IndexError, ValueError, KeyError, TypeError):
        raise MergeError(
            f"{tmp} exists but holds no merge journal ({JOURNAL}), so it is not an interrupted merge "
            "of this command: remove it or choose another output"
        ) from None


def check_key(tmp: Path, recorded: Any, key: Mapping[str, Any]) -> None:
    """MergeError naming each change when the interrupted merge in `tmp` was made under another
    key than `key`."""
    changed = differences(recorded, key)
    if changed:
        raise MergeError(
            f"{tmp} holds an interrupted merge of other inputs or settings ({'; '.join(changed)}); "
            + START_OVER.format(tmp=tmp)
        )


def recorded_key(tmp: Path) -> Any:
    """The key the interrupted merge in `tmp` was made under (MergeError when it holds no journal)."""
    return _lines(tmp)[0]


def load(tmp: Path, key: Mapping[str, Any], shard_files: Sequence[tuple[str, int]]) -> Progress:
    """What the interrupted merge in `tmp` finished (nothing when `tmp` does not exist).

    `shard_files`: the planned output shards, (file name, size when complete). MergeError when
    `tmp` holds no journal, or one made under another key (naming each change), or a journaled
    shard is not on disk at its recorded size."""
    if not tmp.exists():
        return Progress()
    recorded, lines = _lines(tmp)
    check_key(tmp, recorded, key)
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # the line being appended when the merge was killed: its shard is not counted
    for i, record in enumerate(records):
        name, size = shard_files[i]
        found = (tmp / name).stat().st_size if (tmp / name).is_file() else None
        if record["file"] != name or found != size:
            raise MergeError(
                f"{tmp}: journaled shard {record['file']} should be {size} bytes, found "
                f"{'none' if found is None else found}; " + START_OVER.format(tmp=tmp)
            )
    report = [entry for record in records for entry in record["report"]]
    return Progress(len(records), records[-1]["items"] if records else 0, report, records)


class Journal:
    """Appends finished shards to `tmp`'s journal, starting from `progress` (rewritten whole
    first, through a temporary file, so a torn line of an earlier run goes)."""

    def __init__(self, tmp: Path, key: Mapping[str, Any], progress: Progress) -> None:
        path = tmp / JOURNAL
        staged = path.with_name(f"{JOURNAL}.new")
        with open(staged, "w") as f:
            for line in [{"key": key}, *progress.records]:
                f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, path)
        self.path = path
        self._file = open(path, "a")

    def shard_done(self, record: Mapping[str, Any]) -> None:
        """Record a shard whose file is on disk (runs in the writer thread)."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
