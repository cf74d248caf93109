"""lpld_pipeline: squeeze, class-wise synthesis, relabel and student training for LPLD.

Stages so far: :func:`squeeze` (teacher + exact class-wise BN statistics) and :func:`synthesize`
(LPLD's class-wise recover, with classes packed into one batch). The ``lpld`` command line wraps
them (``lpld squeeze``, ``lpld synthesize``); see ``docs/pipeline.md``.
"""

from lpld_pipeline.bnstats import (
    ClassBNStats,
    ClassMoments,
    batchnorm_layers,
    compute_class_stats,
    load_class_stats,
    save_class_stats,
    squeeze,
)
from lpld_pipeline.config import (
    SQUEEZE_PRESETS,
    SYNTHESIS_PRESETS,
    DataConfig,
    SqueezeConfig,
    SynthesisConfig,
    TeacherConfig,
    config_from_dict,
    config_to_dict,
    resolve_config,
)
from lpld_pipeline.data import ImageDataset, build_dataset, load_digits_images
from lpld_pipeline.errors import ArtifactError, ConfigError, DataError, PipelineError
from lpld_pipeline.synthesize import (
    SynthesisResult,
    load_synthesized,
    plan_groups,
    save_imagefolder,
    synthesize,
    synthesize_images,
)
from lpld_pipeline.teacher import (
    NORMALIZATIONS,
    Teacher,
    TeacherSpec,
    TinyResNet,
    build_model,
    load_teacher_checkpoint,
    make_teacher,
    save_teacher_checkpoint,
    state_dict_sha256,
    teacher_accuracy,
)

__all__ = [
    "NORMALIZATIONS",
    "SQUEEZE_PRESETS",
    "SYNTHESIS_PRESETS",
    "ArtifactError",
    "ClassBNStats",
    "ClassMoments",
    "ConfigError",
    "DataConfig",
    "DataError",
    "ImageDataset",
    "PipelineError",
    "SqueezeConfig",
    "SynthesisConfig",
    "SynthesisResult",
    "Teacher",
    "TeacherConfig",
    "TeacherSpec",
    "TinyResNet",
    "batchnorm_layers",
    "build_dataset",
    "build_model",
    "compute_class_stats",
    "config_from_dict",
    "config_to_dict",
    "load_class_stats",
    "load_digits_images",
    "load_synthesized",
    "load_teacher_checkpoint",
    "make_teacher",
    "plan_groups",
    "resolve_config",
    "save_class_stats",
    "save_imagefolder",
    "save_teacher_checkpoint",
    "squeeze",
    "state_dict_sha256",
    "synthesize",
    "synthesize_images",
    "teacher_accuracy",
]
