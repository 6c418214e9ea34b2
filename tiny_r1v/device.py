"""Where a run computes, and in which precision: one answer for learners and rollout engines."""

from __future__ import annotations

import functools
import logging
from typing import Literal

import torch

from tiny_r1v.config.loader import require

logger = logging.getLogger(__name__)


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


AttentionKernel = Literal["sdpa", "flash_attention_2", "eager"]
"""A transformers ``attn_implementation`` the learner loads its models with."""


def resolve_attention(setting: str, device: torch.device, flash_attn_installed: bool) -> AttentionKernel:
    """The learner's attention kernel for the config's ``model.attn_implementation``: ``auto`` ->
    flash_attention_2 on CUDA when the ``flash_attn`` package imports, else sdpa.

    Raises:
        ConfigError: naming ``model.attn_implementation``, for flash_attention_2 where it cannot
            run (no CUDA, or no ``flash_attn`` package) or an unknown kernel.
    """
    if setting == "auto":
        return "flash_attention_2" if device.type == "cuda" and flash_attn_installed else "sdpa"
    require(
        setting in ("sdpa", "flash_attention_2", "eager"), "model.attn_implementation", f"unknown kernel {setting!r}"
    )
    if setting == "flash_attention_2":
        require(
            device.type == "cuda",
            "model.attn_implementation",
            f"flash_attention_2 needs CUDA, but the learner runs on {device.type}; use auto or sdpa",
        )
        require(
            flash_attn_installed,
            "model.attn_implementation",
            "flash_attention_2 needs the flash_attn package, which does not import here; install it "
            "or use auto (sdpa without it)",
        )
    return setting  # type: ignore[return-value]  # one of the kernels, checked above


@functools.cache
def attention_kernel(setting: str, device: torch.device) -> AttentionKernel:
    """`resolve_attention` for this process's installation, logged once per process (the policy
    and the reference model both ask)."""
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        installed = False
    else:
        installed = True
    kernel = resolve_attention(setting, device, installed)
    logger.info("learner attention: %s (model.attn_implementation: %s)", kernel, setting)
    return kernel
