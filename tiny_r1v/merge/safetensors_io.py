"""Streaming safetensors I/O: read one tensor at a time, write planned shards, copy the rest.

Reading parses each shard's header and maps one tensor's bytes at a time: no copy (the maths
reads the page cache), and the mapping goes when the last tensor using it does, so the process
holds only the tensors it is using (a whole mapped shard's touched pages would count towards its
memory until unmapped).
Writing lays each shard's header out from the plan and appends tensors as they come, in a
background thread, holding a bounded buffer.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import shutil
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from tiny_r1v.merge.errors import MergeError
from tiny_r1v.trainer.checkpoint import WEIGHTS_INDEX as INDEX

SINGLE = "model.safetensors"
# Copied from the base next to the merged weights: everything transformers' and vLLM's loaders
# and the processor read besides the weights.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
)
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one stored tensor's bytes are."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    start: int
    """Absolute byte offset in `file`."""
    nbytes: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensors of one safetensors file, in file order. MergeError naming the file (and tensor)
    when the header does not parse or a tensor's bytes lie beyond the end of the file, so a
    truncated shard is found before the merge starts, not halfway through it."""
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        raw_size = f.read(8)
        size = struct.unpack("<Q", raw_size)[0] if len(raw_size) == 8 else None
        if size is None or 8 + size > file_size:
            raise MergeError(f"{path}: truncated safetensors file ({file_size} bytes, too short for its header)")
        try:
            header = json.loads(f.read(size))
            header.pop("__metadata__", None)
            entries = sorted(
                ((name, meta["dtype"], tuple(meta["shape"]), *meta["data_offsets"]) for name, meta in header.items()),
                key=lambda entry: entry[3],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise MergeError(f"{path}: unreadable safetensors header ({type(err).__name__}: {err})") from None
    out = {}
    for name, dtype, shape, begin, end in entries:
        if dtype not in _DTYPES:
            raise MergeError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        info = TensorInfo(_DTYPES[dtype], shape, path, 8 + size + begin, end - begin)
        if info.nbytes != info.dtype.itemsize * math.prod(info.shape):
            raise MergeError(
                f"{path}: tensor {name!r} ({dtype} {list(info.shape)}) has "
                f"{info.nbytes} bytes, not {info.dtype.itemsize * math.prod(info.shape)}"
            )
        if info.start + info.nbytes > file_size:
            raise MergeError(
                f"{path}: truncated: tensor {name!r} ends at byte {info.start + info.nbytes}, the file has {file_size}"
            )
        out[name] = info
    return out


class CheckpointReader:
    """A Hugging Face safetensors model directory (sharded with an index, or one file)."""

    def __init__(self, model_dir: Path, name: str) -> None:
        self.dir, self.name = Path(model_dir), name
        index = self.dir / INDEX
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (self.dir / SINGLE).is_file():
            weight_map, files = {}, [SINGLE]
        else:
            raise MergeError(f"{name}: {self.dir} has neither {INDEX} nor {SINGLE}")
        self.weight_files = [self.dir / file for file in files]
        self.tensors: dict[str, TensorInfo] = {}
        for path in self.weight_files:
            if not path.is_file():
                raise MergeError(f"{name}: {path} is listed in {INDEX} but missing")
            self.tensors.update(read_header(path))
        for tensor, file in weight_map.items():
            if tensor not in self.tensors or self.tensors[tensor].file.name != file:
                raise MergeError(f"{name}: {INDEX} puts tensor {tensor!r} in {file}, which does not hold it")
        self._fds: dict[Path, int] = {}

    def config(self) -> dict:
        return json.loads((self.dir / "config.json").read_text())

    def _fd(self, info: TensorInfo) -> int:
        if info.file not in self._fds:
            self._fds[info.file] = os.open(info.file, os.O_RDONLY)
        return self._fds[info.file]

    def read(self, tensor: str) -> torch.Tensor:
        """The stored tensor (CPU, stored dtype and shape), mapped from its file.

        Private copy-on-write mapping: reading costs no copy, writing to the tensor changes only
        this process's pages, never the file. Unmapped once no tensor uses it."""
        info = self.tensors[tensor]
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        fd = self._fd(info)
        if os.fstat(fd).st_size < info.start + info.nbytes:
            raise MergeError(f"{self.name}: {info.file} ends inside tensor {tensor!r}")
        skip = info.start % mmap.ALLOCATIONGRANULARITY  # a mapping starts on a page boundary
        mapped = mmap.mmap(fd, skip + info.nbytes, access=mmap.ACCESS_COPY, offset=info.start - skip)
        # The tensor holds a reference to the mapping, which is unmapped when it is collected.
        flat = torch.frombuffer(mapped, dtype=torch.uint8, count=info.nbytes, offset=skip)
        return flat.view(info.dtype).reshape(info.shape)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def plan_shards(sizes: Iterable[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Consecutive runs of (name, bytes) of at most `max_bytes` each (a bigger tensor alone)."""
    shards: list[list[str]] = []
    used = max_bytes
    for name, nbytes in sizes:
        if used + nbytes > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return dtype.itemsize * math.prod(shape)


def _header(layout: Sequence[tuple[str, torch.dtype, tuple[int, ...]]]) -> bytes:
    """A safetensors header for tensors stored back to back in `layout` order."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in layout:
        nbytes = _nbytes(dtype, shape)
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def shard_files(
    shards: Sequence[Sequence[str]], layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]
) -> list[tuple[str, int]]:
    """(file name, bytes once complete) of each planned shard, as `ShardWriter` writes them."""
    return [
        (
            shard_name(i, len(shards)),
            len(_header([(name, *layout[name]) for name in shard])) + sum(_nbytes(*layout[name]) for name in shard),
        )
        for i, shard in enumerate(shards)
    ]


class ShardWriter:
    """Writes the planned shards of `out_dir` as their tensors arrive, in plan order.

    Each shard's header is laid out up front from `layout` (name -> dtype, shape), so tensors are
    appended as they come, by one background thread: writing overlaps the merge. Tensors not yet
    on disk (the output buffer) are held up to `buffer_bytes`, or one tensor if it is bigger.

    `start_shard`: the shards before it are on disk already (a resumed merge); tensors start with
    the first of shard `start_shard`. `on_shard_done(i)` runs in the writer thread once shard i is
    on disk (flushed and fsynced), before the next one is opened.
    """

    def __init__(
        self,
        out_dir: Path,
        shards: Sequence[Sequence[str]],
        layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
        buffer_bytes: int,
        start_shard: int = 0,
        on_shard_done: Callable[[int], None] | None = None,
    ) -> None:
        self.dir = out_dir
        self.weight_map = {name: shard_name(i, len(shards)) for i, shard in enumerate(shards) for name in shard}
        self._order = [name for shard in shards[start_shard:] for name in shard]
        self._layout = layout
        self._headers = [_header([(name, *layout[name]) for name in shard]) for shard in shards]
        # Tensor bytes of the shards on disk already count as written (the index's total size).
        self.total_bytes = sum(_nbytes(*layout[name]) for shard in shards[:start_shard] for name in shard)
        self._last = {shard[-1] for shard in shards}
        self._on_shard_done = on_shard_done
        self._buffer_bytes = buffer_bytes
        self._pending: deque[tuple[Future, int]] = deque()
        self._pending_bytes = 0
        self._count = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._file: BinaryIO | None = None
        self._shard = start_shard

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue `tensor` (CPU, the layout's dtype and shape); blocks while the buffer is full."""
        expected = self._order[self._count] if self._count < len(self._order) else None
        if name != expected or (tensor.dtype, tuple(tensor.shape)) != self._layout[name]:
            raise RuntimeError(f"tensor {name!r} {tensor.dtype} {list(tensor.shape)} does not fit the plan")
        data = tensor.contiguous().reshape(-1).view(torch.uint8)
        self._pending.append((self._pool.submit(self._write, name, data), data.numel()))
        self._pending_bytes += data.numel()
        self._count += 1
        self.total_bytes += data.numel()
        while len(self._pending) > 1 and self._pending_bytes > self._buffer_bytes:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        future, nbytes = self._pending.popleft()
        future.result()  # raises what the writer thread raised
        self._pending_bytes -= nbytes

    def _write(self, name: str, data: torch.Tensor) -> None:
        """Runs in the writer thread, in `add` order."""
        if self._file is None:
            self._file = open(self.dir / shard_name(self._shard, len(self._headers)), "wb")
            self._file.write(self._headers[self._shard])
        self._file.write(memoryview(data.numpy()))
        if name in self._last:
            self._file.flush()
            os.fsync(self._file.fileno())  # on disk before a journal may count it as done
            self._file.close()
            self._file = None
            if self._on_shard_done is not None:
                self._on_shard_done(self._shard)
            self._shard += 1

    def finish(self) -> None:
        """Wait for the writes, then write the index (every planned tensor must have come)."""
        while self._pending:
            self._wait_oldest()
        if self._count != len(self._order):
            raise RuntimeError(f"only {self._count} of {len(self._order)} planned tensors were written")
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": self.weight_map}
        (self.dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        self.close()

    def close(self) -> None:
        """Stop the writer thread (queued writes are dropped after a failure)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._file is not None:
            self._file.close()
            self._file = None


def copy_model_files(src: Path, dst: Path) -> list[str]:
    """Copy the non-weight files of `MODEL_FILES` present in `src`; returns their names."""
    copied = [name for name in MODEL_FILES if (src / name).is_file()]
    for name in copied:
        shutil.copy2(src / name, dst / name)
    return copied


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
