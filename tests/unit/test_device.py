"""Device-dependent choices: the learner's attention kernel."""

from __future__ import annotations

import logging

import pytest
import torch

from tiny_r1v.config.loader import ConfigError
from tiny_r1v.device import attention_kernel, resolve_attention

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    "setting, device, installed, expected",
    [
        ("auto", CUDA, True, "flash_attention_2"),
        ("auto", CUDA, False, "sdpa"),
        ("auto", CPU, True, "sdpa"),
        ("auto", CPU, False, "sdpa"),
        ("sdpa", CUDA, True, "sdpa"),
        ("eager", CPU, False, "eager"),
        ("flash_attention_2", CUDA, True, "flash_attention_2"),
    ],
)
def test_resolve_attention(setting, device, installed, expected):
    assert resolve_attention(setting, device, installed) == expected


@pytest.mark.parametrize(
    "device, installed, message",
    [
        (CPU, True, "model.attn_implementation: flash_attention_2 needs CUDA, but the learner runs on cpu"),
        (CUDA, False, "model.attn_implementation: flash_attention_2 needs the flash_attn package"),
    ],
)
def test_explicit_flash_attention_where_it_cannot_run_names_the_key(device, installed, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        resolve_attention("flash_attention_2", device, installed)


def test_unknown_kernel_names_the_key():
    with pytest.raises(ConfigError, match="^model.attn_implementation: unknown kernel 'flex'"):
        resolve_attention("flex", CPU, False)


def test_attention_kernel_logs_its_choice_once(caplog):
    attention_kernel.cache_clear()
    with caplog.at_level(logging.INFO, logger="tiny_r1v.device"):
        # The policy and the reference model both ask.
        assert attention_kernel("auto", CPU) == "sdpa"
        assert attention_kernel("auto", CPU) == "sdpa"
    assert [r.getMessage() for r in caplog.records] == ["learner attention: sdpa (model.attn_implementation: auto)"]
