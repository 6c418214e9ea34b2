"""Typed, frozen, validated configs: dataclass defaults <- YAML file <- `a.b=value` overrides."""

from tiny_r1v.config.loader import ConfigError, load_config, require, section, to_dict
from tiny_r1v.config.model_ref import ModelRef
from tiny_r1v.config.train import (
    AlgorithmConfig,
    DataConfig,
    LearnerConfig,
    LipoConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    TrainConfig,
    TrainerConfig,
)

__all__ = [
    "AlgorithmConfig",
    "ConfigError",
    "DataConfig",
    "LearnerConfig",
    "LipoConfig",
    "ModelConfig",
    "ModelRef",
    "RewardConfig",
    "RolloutConfig",
    "TrainConfig",
    "TrainerConfig",
    "load_config",
    "require",
    "section",
    "to_dict",
]
