"""Per-sample output files, which double as the cache of finished (model, benchmark) pairs.

`<output_dir>/samples/<model>/<benchmark>.jsonl` holds one `SampleRecord` per line; next to it
`<benchmark>.meta.json` holds the settings that produced it and their key. A pair is reused when
the meta file's key equals the current one and the JSONL file has the expected number of lines.
The key covers the model directory's identity, the benchmark's contents and every setting that
changes a record (prompt, decoding, generation limit, dtype, reward weight). Writing removes the
old meta file first and renames each file into place, so an interrupted write is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tiny_r1v.eval.metrics import SampleRecord

FORMAT_VERSION = 1
"""Bumped when records change meaning, so older files are recomputed rather than misread."""


def cache_key(settings: dict[str, Any]) -> str:
    """sha256 of the settings in canonical JSON."""
    return hashlib.sha256(json.dumps({"version": FORMAT_VERSION, **settings}, sort_keys=True).encode()).hexdigest()


def samples_path(out_dir: Path, model: str, benchmark: str) -> Path:
    return out_dir / "samples" / model / f"{benchmark}.jsonl"


def _meta_path(samples: Path) -> Path:
    return samples.with_suffix(".meta.json")


def load(samples: Path, key: str, expected: int) -> list[SampleRecord] | None:
    """The records stored under `key`, or None when absent, from other settings, or incomplete."""
    meta = _meta_path(samples)
    if not (meta.is_file() and samples.is_file()):
        return None
    try:
        if json.loads(meta.read_text()).get("key") != key:
            return None
        records = [SampleRecord.from_json(json.loads(line)) for line in samples.read_text().splitlines() if line]
    except (ValueError, TypeError):  # hand-edited or foreign files: recompute
        return None
    return records if len(records) == expected else None


def save(samples: Path, key: str, settings: dict[str, Any], records: Sequence[SampleRecord]) -> None:
    """Write the records, then the meta file that marks them complete."""
    samples.parent.mkdir(parents=True, exist_ok=True)
    meta = _meta_path(samples)
    meta.unlink(missing_ok=True)
    _write_atomic(samples, "".join(json.dumps(record.to_json(), ensure_ascii=False) + "\n" for record in records))
    _write_atomic(meta, json.dumps({"key": key, "records": len(records), "settings": settings}, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
