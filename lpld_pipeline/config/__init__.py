"""Typed, layered configuration of the pipeline stages.

:mod:`~lpld_pipeline.config.records` holds the frozen records, :mod:`~lpld_pipeline.config.parse`
resolves them from layers (preset, file, ``key=value`` overrides) and
:mod:`~lpld_pipeline.config.presets` holds the named recipes. Everything is re-exported here.
"""

from lpld_pipeline.config.parse import config_from_dict, config_to_dict, resolve_config
from lpld_pipeline.config.presets import (
    RELABEL_PRESETS,
    RUN_PRESETS,
    SQUEEZE_PRESETS,
    SYNTHESIS_PRESETS,
    TRAIN_PRESETS,
)
from lpld_pipeline.config.records import (
    DataConfig,
    RelabelStageConfig,
    RunConfig,
    SqueezeConfig,
    SynthesisConfig,
    TeacherConfig,
    TrainConfig,
)

__all__ = [
    "RELABEL_PRESETS",
    "RUN_PRESETS",
    "SQUEEZE_PRESETS",
    "SYNTHESIS_PRESETS",
    "TRAIN_PRESETS",
    "DataConfig",
    "RelabelStageConfig",
    "RunConfig",
    "SqueezeConfig",
    "SynthesisConfig",
    "TeacherConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "resolve_config",
]
