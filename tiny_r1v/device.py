"""Where a run computes, and in which precision: one answer for learners and rollout engines."""

from __future__ import annotations

import torch


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(setting)


def compute_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 on CPU (this CPU emulates bf16, and the rollout and
    learner log-probs must agree)."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[setting]
