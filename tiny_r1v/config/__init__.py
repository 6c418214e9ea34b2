"""Typed, frozen, validated configs: dataclass defaults <- YAML file <- `a.b=value` overrides."""

from tiny_r1v.config.loader import ConfigError, load_config, require, section, to_dict
from tiny_r1v.config.model_ref import ModelRef
from tiny_r1v.config.train import (
    AlgorithmConfig,
    DapoOverlongConfig,
    DataConfig,
    EfficientConfig,
    KimiConfig,
    LearnerConfig,
    LinearConfig,
    LipoConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    ShorterBetterConfig,
    TrainConfig,
    TrainerConfig,
)

__all__ = [
    "AlgorithmConfig",
    "ConfigError",
    "DapoOverlongConfig",
    "DataConfig",
    "EfficientConfig",
    "KimiConfig",
    "LearnerConfig",
    "LinearConfig",
    "LipoConfig",
    "ModelConfig",
    "ModelRef",
    "RewardConfig",
    "RolloutConfig",
    "ShorterBetterConfig",
    "TrainConfig",
    "TrainerConfig",
    "load_config",
    "require",
    "section",
    "to_dict",
]
