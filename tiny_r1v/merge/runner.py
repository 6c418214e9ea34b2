"""The merge job: check the output and the inputs, stream every tensor through its treatment,
write the sharded checkpoint with its report and provenance into a temporary directory (its
journal lets a killed merge continue), rename it.

Memory: one tensor from each of base + K experts at a time (mapped from the page cache), the
float32 task vectors and the method's working set, and the output buffer of the background
writer; never a whole model.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import resource
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from tiny_r1v.config.loader import to_dict
from tiny_r1v.device import resolve_device
from tiny_r1v.merge import journal
from tiny_r1v.merge.config import MergeConfig
from tiny_r1v.merge.errors import MergeError
from tiny_r1v.merge.lock import exclusive
from tiny_r1v.merge.methods import ELEMENTWISE, METHODS, mean
from tiny_r1v.merge.plan import MergePlan, PlanItem, build_plan
from tiny_r1v.merge.policy import Treatment
from tiny_r1v.merge.safetensors_io import INDEX, CheckpointReader, ShardWriter, copy_model_files, sha256, shard_files
from tiny_r1v.merge.sources import Source
from tiny_r1v.timing import timed

REPORT = "merge_report.json"
PROVENANCE = "merge_provenance.json"

ProgressFactory = Callable[..., Any]
"""tqdm-like: called with total=, desc=, unit=; the result has update(n) and close()."""


# Entries per block of an elementwise merge on the CPU: the block's float32 working set (base,
# K task vectors, result: about 6 MB for K = 3) stays in cache, where whole-tensor passes would
# stream K + 3 tensor-sized buffers through memory for every operation.
CPU_BLOCK = 1 << 18


def merge_tensor(
    base: Tensor,
    experts: Sequence[Tensor],
    treatment: Treatment,
    merge_fn: Callable[[Tensor], Tensor],
    device: torch.device,
    block: int | None = None,
) -> tuple[Tensor, list[int]]:
    """One tensor's result (the base's dtype, on the CPU) and which experts' task vectors were used.

    base, experts: the stored tensors [*shape]. Task vectors are float32 on `device`; zero ones
    are skipped (all zero: the base itself is returned); `mean` averages the rest and `merge`
    hands them, [K', *shape], to `merge_fn`. `block`: merge `block` entries at a time, as
    [K', block] slices of the flattened tensors (only for elementwise functions).
    """
    if treatment in ("base", "tied"):
        return base, []
    # An expert equal to the base has a zero task vector (exact: the float32 difference of two
    # stored values is zero only when they are equal); the comparison stops at the first difference.
    used = [k for k, expert in enumerate(experts) if not torch.equal(expert, base)]
    if not used:
        return base, []
    fn = mean if treatment == "mean" else merge_fn
    out = torch.empty_like(base)
    if block is None or base.numel() <= block:
        w0 = torch.empty(base.shape, dtype=torch.float32, device=device)
        taus = torch.empty((len(used), *base.shape), dtype=torch.float32, device=device)
        _merge_into(out, base, [experts[k] for k in used], fn, w0, taus)
        return out, used
    # Float32 working space allocated once and reused by every block.
    w0 = torch.empty(block, dtype=torch.float32, device=device)
    taus = torch.empty((len(used), block), dtype=torch.float32, device=device)
    flat = [experts[k].reshape(-1) for k in used]
    for start, part in zip(range(0, base.numel(), block), out.view(-1).split(block), strict=True):
        stop = start + len(part)
        _merge_into(
            part,
            base.reshape(-1)[start:stop],
            [expert[start:stop] for expert in flat],
            fn,
            w0[: len(part)],
            taus[:, : len(part)],
        )
    return out, used


def _merge_into(
    out: Tensor, base: Tensor, experts: Sequence[Tensor], fn: Callable[[Tensor], Tensor], w0: Tensor, taus: Tensor
) -> None:
    """out = W_0 + fn(task vectors), for non-zero task vectors; w0 [*shape] and taus [K', *shape]
    are float32 working space on the maths device, `out` is the result's (CPU) tensor."""
    w0.copy_(base)
    for tau, expert in zip(taus, experts, strict=True):
        tau.copy_(expert).sub_(w0)
    merged = fn(taus).add_(w0)  # fn returns a new tensor (or a view of our own taus)
    # One reduction instead of an elementwise test: any NaN or inf makes the sum non-finite.
    if not torch.isfinite(merged.sum()):
        raise ValueError("the merged tensor has NaN or inf entries")
    out.copy_(merged)


def staging_path(output: Path) -> Path:
    """Where the merge writes before renaming to `output`: the same path on every run, so a run
    killed midway is continued by the next (see `journal`)."""
    return output.with_name(f"{output.name}.merge-tmp")


def check_output(output: Path, overwrite: bool, sources: Sequence[Source]) -> None:
    """MergeError unless the merge may write `output`: it (and its temporary directory) must not
    be, contain or lie inside any input's directory, with or without `overwrite`; an existing
    output is replaced only with `overwrite` and only when it is a previous merge's (or empty)."""
    out = output.resolve()
    for source in sources:
        who = "the base" if source.name == "base" else f"expert {source.name!r}"
        for given in dict.fromkeys([source.given.resolve(), source.model_dir]):
            for path in (out, staging_path(out)):
                relation = (
                    "is"
                    if path == given
                    else "lies inside"
                    if given in path.parents
                    else "contains"
                    if path in given.parents
                    else None
                )
                if relation is not None:
                    raise MergeError(
                        f"output {path} {relation} the directory of {who} ({given}): a merge never writes "
                        "over its inputs, overwrite or not; choose another output"
                    )
    aside = _aside_path(out)
    if aside.exists() and not (aside / PROVENANCE).is_file():
        raise MergeError(
            f"{aside} exists and is not a previous merge's output (no {PROVENANCE}): the merge moves a replaced "
            "output there and removes it; remove or move it yourself"
        )
    if not out.exists():
        return
    if not overwrite:
        raise MergeError(f"output {out} exists (set overwrite=true to replace a previous merge's output)")
    found = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    if found is None or (found and PROVENANCE not in found):
        what = "a file" if found is None else f"{', '.join(found[:5])}{' ...' if len(found) > 5 else ''}"
        raise MergeError(
            f"output {out} holds {what}, not a previous merge's output (no {PROVENANCE}): overwrite=true "
            "only replaces a merge's output; remove or move it yourself, or choose another output"
        )


def check(cfg: MergeConfig, base_src: Source, expert_srcs: Sequence[Source]) -> MergePlan:
    """Everything `merge` checks before writing (MergeError on a problem): the output, every
    input's headers, the plan, and an interrupted merge to continue (hashing the inputs then,
    when `hash_inputs` is on: the merge hashes them again). The device is left to the merge: it
    runs where Ray places it, which may not be where this runs."""
    with ExitStack() as stack:
        base, experts, plan = _open(cfg, base_src, expert_srcs, stack)
        tmp = staging_path(Path(cfg.output))
        if tmp.exists() and not cfg.restart:
            inputs = _describe_inputs([base_src, *expert_srcs], [base, *experts], cfg.hash_inputs)
            # The journal's device, as far as this check goes: the merge compares the one it gets.
            recorded = journal.recorded_key(tmp)
            device = recorded.get("settings", {}).get("device") if isinstance(recorded, dict) else None
            key = resume_key(cfg, torch.device(device) if device else resolve_device(cfg.device), inputs)
            journal.load(tmp, key, _shard_files(plan))
        return plan


def _open(
    cfg: MergeConfig, base_src: Source, expert_srcs: Sequence[Source], stack: ExitStack
) -> tuple[CheckpointReader, list[CheckpointReader], MergePlan]:
    check_output(Path(cfg.output), cfg.overwrite, [base_src, *expert_srcs])
    readers = []
    for source in (base_src, *expert_srcs):
        readers.append(CheckpointReader(source.model_dir, source.name))
        stack.callback(readers[-1].close)
    base, experts = readers[0], readers[1:]
    return base, experts, build_plan(base, experts, cfg.vision, cfg.shard_size_mb << 20)


def _layout(plan: MergePlan) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {item.name: (item.info.dtype, item.info.shape) for item in plan.items}


def _shard_files(plan: MergePlan) -> list[tuple[str, int]]:
    return shard_files(plan.shards, _layout(plan))


def resume_key(cfg: MergeConfig, device: torch.device, inputs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a continued merge must share with the interrupted one: every setting that can change
    a byte of the output (not `overwrite`, `restart`, `buffer_mb`; the device as resolved; the
    inputs by their files, not by the config's paths) and each input file's identity (see
    `_describe_input`)."""
    settings = {
        k: v for k, v in to_dict(cfg).items() if k not in ("overwrite", "restart", "buffer_mb", "base", "experts")
    }
    return {
        "settings": {**settings, "device": device.type},
        "inputs": {entry["name"]: {"path": entry["path"], "files": entry["identity"]} for entry in inputs},
    }


def merge(
    cfg: MergeConfig, base_src: Source, expert_srcs: Sequence[Source], progress: ProgressFactory = tqdm
) -> dict[str, Any]:
    """Merge the experts into the base as `cfg` says (sources: see `sources.resolve`).

    Returns the provenance (also written to the output's `merge_provenance.json`). Raises
    MergeError before writing anything when another merge is writing `cfg.output`
    (`lock.exclusive`) or the inputs do not fit, and removes the temporary
    directory when a result is not finite. Any other interruption (a kill, an error of the
    machine) leaves the temporary directory and its journal: the same merge run again continues
    from the last finished shard, to the same bytes (`journal`).
    """
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    rss_at_start = _current_rss()
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    output = Path(cfg.output)
    tmp = staging_path(output)
    with ExitStack() as stack:
        stack.enter_context(exclusive(output))
        with timed(seconds, "check"):
            base, experts, plan = _open(cfg, base_src, expert_srcs, stack)
        with timed(seconds, "hash"):
            inputs = _describe_inputs([base_src, *expert_srcs], [base, *experts], cfg.hash_inputs)
        key = resume_key(cfg, device, inputs)
        if cfg.restart:
            _discard_interrupted(tmp)
        done = journal.load(tmp, key, _shard_files(plan))
        tmp.mkdir(parents=True, exist_ok=True)
        record = journal.Journal(tmp, key, done)
        stack.callback(record.close)
        try:
            with timed(seconds, "merge"):
                report, bytes_read, bytes_written = _stream(
                    cfg, plan, base, experts, tmp, device, seconds, progress, done, record
                )
        except MergeError:
            shutil.rmtree(tmp, ignore_errors=True)  # a non-finite result: a rerun would fail alike
            raise
        with timed(seconds, "finish"):
            copy_model_files(base_src.model_dir, tmp)
            _write_json(tmp / REPORT, report, indent=1)
        seconds["total"] = time.perf_counter() - start
        provenance = {
            **_what(cfg, plan, inputs, report, output),
            **_how(seconds, bytes_read, bytes_written, rss_at_start, device, done),
        }
        _write_json(tmp / PROVENANCE, provenance, indent=2)
        record.close()
        (tmp / journal.JOURNAL).unlink()
        _publish(tmp, output)
    return provenance


def _what(
    cfg: MergeConfig, plan: MergePlan, inputs: Sequence[dict[str, Any]], report: Sequence[dict], output: Path
) -> dict[str, Any]:
    """The provenance fields that describe the result: equal for every run of the same merge."""
    return {
        "method": cfg.method,
        "parameters": to_dict(cfg.params()),
        "config": to_dict(cfg),
        "inputs": [{k: v for k, v in entry.items() if k != "identity"} for entry in inputs],
        "output": str(output.resolve()),
        "tensors": dict(Counter(entry["treatment"] for entry in report)),
        "tied_word_embeddings": plan.tied,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }


def _how(
    seconds: dict[str, float],
    bytes_read: int,
    bytes_written: int,
    rss_at_start: int | None,
    device: torch.device,
    done: journal.Progress,
) -> dict[str, Any]:
    """The provenance fields of this run (they differ between runs of the same merge: a continued
    merge reads only what was left and counts the time and memory of its own run)."""
    return {
        "seconds": {phase: round(value, 4) for phase, value in seconds.items()},
        "bytes": {"read": bytes_read, "written": bytes_written},
        "memory_mb": _memory(rss_at_start, device),
        "device": str(device),
        "resumed": {"shards": done.shards, "tensors": done.items},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _write_json(path: Path, value: Any, indent: int) -> None:
    path.write_text(json.dumps(value, indent=indent) + "\n")


def _discard_interrupted(tmp: Path) -> None:
    """`restart=true`: drop an interrupted merge's temporary directory, only if it is one."""
    if tmp.exists():
        if not (tmp / journal.JOURNAL).is_file():
            raise MergeError(
                f"{tmp} holds no merge journal ({journal.JOURNAL}); restart=true removes only a merge's own"
            )
        shutil.rmtree(tmp)


def _aside_path(output: Path) -> Path:
    """Where a replaced output waits until the new one is in place."""
    return output.with_name(f"{output.name}.merge-old")


def _publish(tmp: Path, output: Path) -> None:
    """Rename the finished `tmp` to `output`; a previous merge's output (checked by
    `check_output`, like anything already at the aside path) is moved aside first and removed
    once the new one is in place."""
    old = _aside_path(output)
    if output.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(output, old)
    os.replace(tmp, output)
    shutil.rmtree(old, ignore_errors=True)


def _stream(
    cfg: MergeConfig,
    plan: MergePlan,
    base: CheckpointReader,
    experts: Sequence[CheckpointReader],
    out: Path,
    device: torch.device,
    seconds: dict[str, float],
    progress: ProgressFactory,
    done: journal.Progress,
    record: journal.Journal,
) -> tuple[list[dict[str, Any]], int, int]:
    """Merge and write every tensor after those `done` holds; returns the treatment report (all
    tensors) and the bytes read and written by this run.

    `seconds` gains `read` (mapping the inputs; with a cold page cache, the maths then waits on
    the disk), `compute` and `write_wait` (time blocked on a full output buffer; the rest of the
    writing overlaps reading and maths). Each finished shard goes to the journal `record`, with
    the report entries of the plan items it completes."""
    merge_fn = functools.partial(METHODS[cfg.method], params=cfg.params())
    elementwise = cfg.method in ELEMENTWISE
    position = {item.name: i for i, item in enumerate(plan.items)}
    ends = [position[shard[-1]] + 1 for shard in plan.shards]  # plan items through each shard
    files = _shard_files(plan)
    report, bytes_read = list(done.report), 0

    def shard_done(i: int) -> None:  # the writer thread; the entries were appended before the add
        begin = ends[i - 1] if i else 0
        record.shard_done(
            {"file": files[i][0], "bytes": files[i][1], "items": ends[i], "report": report[begin : ends[i]]}
        )

    writer = ShardWriter(out, plan.shards, _layout(plan), cfg.buffer_mb << 20, done.shards, shard_done)
    bar = progress(total=len(plan.items), desc=f"merge ({cfg.method})", unit="tensor")
    bar.update(done.items)
    try:
        for item in plan.items[done.items :]:
            treatment = item.assignment.treatment
            spent: dict[str, float] = {}
            with timed(spent, "read"):
                stored, *inputs = [reader.read(item.name) for reader in _readers(item, base, experts)] or [None]
            bytes_read += item.info.nbytes * (len(inputs) + (stored is not None))
            with timed(spent, "compute"):
                block = CPU_BLOCK if device.type == "cpu" and (treatment == "mean" or elementwise) else None
                try:
                    result, used = (
                        merge_tensor(stored, inputs, treatment, merge_fn, device, block)
                        if stored is not None
                        else (None, [])
                    )
                except ValueError as err:
                    raise MergeError(f"tensor {item.name!r} ({treatment}, {cfg.method}): {err}") from None
                if result is not None and result is stored:
                    # The base itself, mapped from its file: a copy for the writer's queue frees the
                    # mapping (and the file descriptor each mapping holds) now.
                    result = result.clone()
                del stored, inputs
            report.append(_report_entry(item, [experts[k].name for k in used], sum(spent.values())))
            with timed(spent, "write_wait"):
                if result is not None:
                    writer.add(item.name, result)
            for phase, value in spent.items():
                seconds[phase] = seconds.get(phase, 0.0) + value
            bar.update(1)
        with timed(seconds, "write_wait"):
            writer.finish()
    finally:
        writer.close()
        bar.close()
    return report, bytes_read, writer.total_bytes


def _readers(item: PlanItem, base: CheckpointReader, experts: Sequence[CheckpointReader]) -> list[CheckpointReader]:
    """Whose copies of the item its treatment reads: the base's (unless tied), then the experts'
    (for `merge` and `mean`)."""
    treatment = item.assignment.treatment
    return ([] if treatment == "tied" else [base]) + (list(experts) if treatment in ("merge", "mean") else [])


def _report_entry(item: PlanItem, used: list[str], seconds: float) -> dict[str, Any]:
    entry = {
        "name": item.name,
        "rule": item.assignment.rule,
        "treatment": item.assignment.treatment,
        "shape": list(item.info.shape),
        "dtype": str(item.info.dtype).removeprefix("torch."),
        "experts": used,
        "seconds": round(seconds, 6),
    }
    if item.assignment.tied_to is not None:
        entry["tied_to"] = item.assignment.tied_to
    return entry


def _describe_inputs(
    sources: Sequence[Source], readers: Sequence[CheckpointReader], hashed: bool
) -> list[dict[str, Any]]:
    return [_describe_input(source, reader, hashed) for source, reader in zip(sources, readers, strict=True)]


def _describe_input(source: Source, reader: CheckpointReader, hashed: bool) -> dict[str, Any]:
    """Path and (when `hashed`) sha256 of each weight file, plus one digest over them; and each
    file's `identity` for resuming: size and sha256 when hashed, else size and modification time
    (changed by any rewrite, so a cheap check when hashing is off)."""
    index = reader.dir / INDEX
    files = [*reader.weight_files, index] if index.is_file() else reader.weight_files
    entry: dict[str, Any] = {"name": source.name, "path": str(source.model_dir.resolve())}
    stats = {path.name: path.stat() for path in files}
    if hashed:
        digests = {path.name: sha256(path) for path in files}
        entry["files"] = digests
        entry["sha256"] = _digest_of(digests)
        entry["identity"] = {name: {"size": stats[name].st_size, "sha256": digests[name]} for name in stats}
    else:
        entry["identity"] = {name: {"size": st.st_size, "mtime_ns": st.st_mtime_ns} for name, st in stats.items()}
    return entry


def _digest_of(digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{name}:{d}\n" for name, d in sorted(digests.items())).encode()).hexdigest()


def _current_rss() -> int | None:
    """Resident bytes now (Linux), else None."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def peak_rss() -> int:
    """This process's resident high-water mark in bytes.

    VmHWM where there is one (Linux): unlike ru_maxrss, which keeps the high-water mark from
    before exec, i.e. of the parent at fork time (a subprocess of a large pytest or Ray worker).
    """
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _memory(rss_at_start: int | None, device: torch.device) -> dict[str, float | None]:
    mb = 1 << 20
    return {
        "peak_rss": round(peak_rss() / mb, 1),
        "rss_at_start": None if rss_at_start is None else round(rss_at_start / mb, 1),
        "peak_cuda": round(torch.cuda.max_memory_allocated(device) / mb, 1) if device.type == "cuda" else None,
    }
