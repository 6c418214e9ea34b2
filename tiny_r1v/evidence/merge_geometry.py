"""Where each merge puts its task vector, relative to the experts', on every 2-D linear weight:
the measurements that tell a merge that shrinks, inflates or turns away from what each expert did.

    python -m tiny_r1v.evidence.merge_geometry --base DIR --experts DIR [DIR ...] \\
        --merges NAME=DIR [NAME=DIR ...] [--out FILE]

Per tensor, with task vectors tau_k = W_k - W_0 [d_out, d_in], S = sum_k tau_k (task arithmetic
at lambda = 1), tau_m = W_merged - W_0 and G_k = tau_k^T tau_k:

- ``norm``: ||tau_m|| / ||S|| (task arithmetic at lambda: lambda; the mean: 1/K);
- ``cosine``: cos(tau_m, S);
- ``keep``: the mean over experts of <tau_m, tau_k G_k> / ||G_k||^2, how much of expert k's
  change tau_m applies to the inputs expert k changed (1: as much as expert k; WUDI's target);
- ``loss``: the WUDI loss (c_k = 1) of tau_m over that of the base, D(tau_m) / D(0) (0: every
  expert reproduced on its own inputs; 1: no better than the base).

Rows ``sum`` and ``mean`` (1/K of S) are computed alongside as references; experts that left a
tensor unchanged are left out of its figures, as the merges leave them out. Writes the per-tensor
figures as JSON (``--out``) and prints, per merge and tensor rule, the median and range over
tensors.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from tiny_r1v.merge.methods import total
from tiny_r1v.merge.objective import WudiObjective
from tiny_r1v.merge.policy import RULES, assign
from tiny_r1v.merge.safetensors_io import CheckpointReader
from tiny_r1v.trainer.checkpoint import resolve_model_dir

FIGURES = ("norm", "cosine", "keep", "loss")


@torch.no_grad()
def tensor_geometry(taus: Tensor, merged: Tensor) -> dict[str, float]:
    """`FIGURES` of one merged task vector `merged` [d_out, d_in] against the experts' `taus`
    [K, d_out, d_in] (float32 or float64; ValueError naming a zero one)."""
    norms = taus.flatten(1).norm(dim=1)
    if bool((norms == 0).any()):
        raise ValueError(f"task vector {int((norms == 0).nonzero()[0])} is zero: leave unchanged experts out")
    s = total(taus)
    objective = WudiObjective(taus)
    # <tau_m, tau_k G_k> = <tau_m tau_k^T, tau_k tau_k^T> and ||G_k|| = ||tau_k tau_k^T||: the smaller side.
    if objective.side == "gram":
        products, overlap = objective.grams, (merged.unsqueeze(0) * objective.tau_grams).flatten(1).sum(1)
    else:
        products = taus @ taus.mT  # [K, d_out, d_out]
        overlap = ((merged @ taus.mT) * products).flatten(1).sum(1)
    sq = products.flatten(1).square().sum(1)  # [K]
    at_base = torch.dot(sq, objective.inv_sq_norms)  # D(0)
    ones = taus.new_ones(len(taus))
    return {
        "norm": float(merged.norm() / s.norm()),
        "cosine": float(torch.nn.functional.cosine_similarity(merged.flatten(), s.flatten(), dim=0)),
        "keep": float((overlap / sq).mean()),
        "loss": float(objective.loss_and_grad(merged, ones)[0] / at_base),
    }


def linear_tensors(reader: CheckpointReader) -> dict[str, str]:
    """Tensor name -> policy rule of every 2-D linear weight (language model and vision tower)."""
    shapes = {name: info.shape for name, info in reader.tensors.items()}
    linear = {rule.name for rule in RULES if rule.role == "linear"}
    return {name: a.rule for name, a in assign(shapes, vision="merge", tied=False).items() if a.rule in linear}


def measure(base: Path, experts: Sequence[Path], merges: Mapping[str, Path]) -> list[dict]:
    """One record per (merge or reference, tensor): name, tensor, rule, the number of experts that
    changed the tensor and `FIGURES` against those; tensors no expert changed are left out."""
    base_reader = CheckpointReader(base, "base")
    expert_readers = [CheckpointReader(path, f"expert {path}") for path in experts]
    merge_readers = {name: CheckpointReader(path, f"merge {name}") for name, path in merges.items()}
    records = []
    for tensor, rule in linear_tensors(base_reader).items():
        w0 = base_reader.read(tensor).float()
        moved = [tau for reader in expert_readers if bool((tau := reader.read(tensor).float() - w0).any())]
        if not moved:
            continue
        changed = torch.stack(moved)
        s = total(changed)
        candidates = {"sum": s, "mean": s / len(changed)}
        candidates |= {name: reader.read(tensor).float() - w0 for name, reader in merge_readers.items()}
        for name, merged in candidates.items():
            figures = tensor_geometry(changed, merged)
            records.append({"merge": name, "tensor": tensor, "rule": rule, "experts": len(changed), **figures})
    return records


def summary(records: Sequence[dict]) -> list[dict]:
    """Per (merge, rule): the number of tensors and each figure's median, min and max."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["merge"], record["rule"]), []).append(record)
    out = []
    for (merge, rule), rows in groups.items():
        row: dict = {"merge": merge, "rule": rule, "tensors": len(rows)}
        for figure in FIGURES:
            values = [r[figure] for r in rows]
            row[figure] = (statistics.median(values), min(values), max(values))
        out.append(row)
    return out


def format_summary(rows: Sequence[dict]) -> str:
    """`summary`'s rows as a Markdown table."""
    lines = ["| merge | rule | tensors | " + " | ".join(f"{f} median [min, max]" for f in FIGURES) + " |"]
    lines.append("|---|---|---:|" + "---:|" * len(FIGURES))
    for row in rows:
        cells = [f"{row[f][0]:.3f} [{row[f][1]:.3f}, {row[f][2]:.3f}]" for f in FIGURES]
        lines.append(f"| {row['merge']} | {row['rule']} | {row['tensors']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


REFERENCES = ("sum", "mean")


def _named(item: str) -> tuple[str, Path]:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {item!r}")
    if name in REFERENCES:
        raise argparse.ArgumentTypeError(f"{item!r}: {name!r} names a reference row; call the merge otherwise")
    return name, Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the base model directory")
    parser.add_argument("--experts", type=Path, nargs="+", required=True, help="expert run or model directories")
    parser.add_argument("--merges", type=_named, nargs="+", required=True, help="NAME=DIR of each merged model")
    parser.add_argument("--out", type=Path, help="write every tensor's figures here (JSON; a new file)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists() and not args.overwrite:
        parser.error(f"--out {args.out} exists; pass --overwrite to replace it")
    names = [name for name, _ in args.merges]
    if len(set(names)) < len(names):
        parser.error(f"--merges: a name given twice ({', '.join(sorted(n for n in set(names) if names.count(n) > 1))})")
    experts = [resolve_model_dir(path, None, f"expert {path}") for path in args.experts]
    merges = {name: resolve_model_dir(path, None, f"merge {name}") for name, path in args.merges}
    records = measure(resolve_model_dir(args.base, None, "base"), experts, merges)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(args.out)
    print(format_summary(summary(records)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
