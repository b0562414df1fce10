"""Experiment configuration: YAML files composed with OmegaConf, validated against typed dataclasses.

An experiment file names the files it extends in a `defaults:` list (paths relative to the file) and
states only what it changes. Further YAML overlays (debug profiles) and `key=value` overrides, in the
form a W&B sweep agent sends with `${args_no_hyphens}`, are merged on top, in that order.
"""
from mp_lightning.config.compose import compose, load_yaml_with_defaults, parse_overrides, save_config
from mp_lightning.config.schema import (
    CallbacksConfig,
    CheckpointConfig,
    ExperimentConfig,
    LoggerConfig,
    MediaConfig,
    TrainerConfig,
)

__all__ = [
    "compose",
    "load_yaml_with_defaults",
    "parse_overrides",
    "save_config",
    "ExperimentConfig",
    "TrainerConfig",
    "LoggerConfig",
    "CallbacksConfig",
    "CheckpointConfig",
    "MediaConfig",
]
