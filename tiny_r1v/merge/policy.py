"""Treatment policy (SPEC §3) as data: which Qwen2.5-VL tensors are which, and what each kind gets.

`RULES` says what a tensor *is* (tower and role), by full-match name patterns that accept both
Qwen2.5-VL key layouts: the live module names (`model.language_model.*`, `model.visual.*`) and
the older saved names (`model.*`, `visual.*`) that transformers 5.9 still writes. `treatment()`
says what that kind of tensor gets. Every tensor must match exactly one rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from tiny_r1v.merge.errors import MergeError

Role = Literal["linear", "embedding", "other"]
Tower = Literal["language", "vision"]
Treatment = Literal["merge", "mean", "base", "tied"]
"""merge: the chosen method; mean: W_0 + mean of the non-zero task vectors; base: W_0 kept;
tied: the output head tied to the input embedding, merged (once) as that tensor, not written."""

_LM = r"(?:model\.language_model\.|model\.)"
_VIS = r"(?:model\.)?visual\."
_VIS_LINEAR = r"(?:blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:gate|up|down)_proj)|merger\.mlp\.[02])"


@dataclass(frozen=True)
class Rule:
    name: str
    """Rule name, shown in the treatment report."""
    pattern: str
    """Regular expression the whole tensor name must match."""
    tower: Tower
    role: Role
    """`linear` tensors must be 2-D: they are the ones an optimised merge may take."""
    tied_to: str | None = None
    """Rule of the tensor this one equals when the config ties word embeddings."""


RULES: tuple[Rule, ...] = (
    Rule(
        "lm.linear",
        _LM + r"layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight",
        "language",
        "linear",
    ),
    Rule("lm.bias", _LM + r"layers\.\d+\.self_attn\.[qkv]_proj\.bias", "language", "other"),
    Rule("lm.norm", _LM + r"(?:layers\.\d+\.(?:input|post_attention)_layernorm|norm)\.weight", "language", "other"),
    Rule("lm.embed_tokens", _LM + r"embed_tokens\.weight", "language", "embedding"),
    Rule("lm.head", r"lm_head\.weight", "language", "embedding", tied_to="lm.embed_tokens"),
    Rule("vision.linear", _VIS + _VIS_LINEAR + r"\.weight", "vision", "linear"),
    Rule("vision.bias", _VIS + _VIS_LINEAR + r"\.bias", "vision", "other"),
    Rule("vision.norm", _VIS + r"(?:blocks\.\d+\.norm[12]|merger\.ln_q)\.weight", "vision", "other"),
    Rule("vision.patch_embed", _VIS + r"patch_embed\.proj\.weight", "vision", "other"),
)


@dataclass(frozen=True)
class Assignment:
    """What happens to one tensor."""

    rule: str
    treatment: Treatment
    tied_to: str | None = None
    """For `tied`: the tensor this one is merged as."""


def treatment(rule: Rule, vision: Literal["mean", "merge", "base"]) -> Treatment:
    """SPEC §3: 2-D language-model weights merge; embeddings, norms, biases and other shapes take
    the mean; the vision tower follows the `vision` switch (`merge` = like the language model)."""
    if rule.tower == "vision" and vision == "base":
        return "base"
    merges = rule.role == "linear" and (rule.tower == "language" or vision == "merge")
    return "merge" if merges else "mean"


def assign(
    shapes: Mapping[str, Sequence[int]],
    vision: Literal["mean", "merge", "base"],
    tied: bool,
    rules: Sequence[Rule] = RULES,
) -> dict[str, Assignment]:
    """Assignment of every tensor (name -> shape), or a MergeError naming every unmatched,
    ambiguous or misshapen tensor. `tied`: the config ties the output head to the embedding."""
    compiled = [(rule, re.compile(rule.pattern)) for rule in rules]
    out: dict[str, Assignment] = {}
    tied_to_rule: dict[str, str] = {}
    problems: list[str] = []
    for name, shape in shapes.items():
        matches = [rule for rule, regex in compiled if regex.fullmatch(name)]
        if len(matches) != 1:
            which = "no rule" if not matches else "rules " + ", ".join(rule.name for rule in matches)
            problems.append(f"tensor {name!r} matches {which} (each tensor must match exactly one)")
            continue
        rule = matches[0]
        if rule.role == "linear" and len(shape) != 2:
            problems.append(f"tensor {name!r} (rule {rule.name}) is a linear weight but has shape {list(shape)}")
            continue
        out[name] = Assignment(rule.name, treatment(rule, vision))
        if tied and rule.tied_to is not None:
            tied_to_rule[name] = rule.tied_to
    by_rule = {assignment.rule: name for name, assignment in out.items()}
    for name, target in tied_to_rule.items():
        if target not in by_rule:
            problems.append(f"tensor {name!r} is tied (tie_word_embeddings) but no tensor matches rule {target}")
        out[name] = Assignment(out[name].rule, "tied", by_rule.get(target))
    if problems:
        raise MergeError("treatment policy: " + "; ".join(problems))
    return out
