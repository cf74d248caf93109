"""lpld_pipeline: squeeze, class-wise synthesis, relabel and student training for LPLD.

Stages: :func:`squeeze` (teacher + exact class-wise BN statistics), :func:`synthesize` (LPLD's
class-wise recover, with classes packed into one batch), :func:`relabel` (the teacher's soft labels
for the kept entries of a pruning plan, into an ``lpldstore`` store), :func:`train` (a student
from the store with the pool loader) and :func:`run` (all four and a report). The ``lpld`` command
line wraps them (and ``lpld verify --teacher``, :mod:`lpld_pipeline.check`); see ``docs/pipeline.md``.

The configs and errors need neither torch nor torchvision. The stages do: without them installed
the package still imports, and using a stage raises :class:`MissingDependencyError` naming the
extra to install.
"""

from lpld_pipeline.config import (
    RELABEL_PRESETS,
    RUN_PRESETS,
    SQUEEZE_PRESETS,
    SYNTHESIS_PRESETS,
    TRAIN_PRESETS,
    DataConfig,
    RelabelStageConfig,
    RunConfig,
    SqueezeConfig,
    SynthesisConfig,
    TeacherConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    resolve_config,
)
from lpld_pipeline.errors import ArtifactError, ConfigError, DataError, MissingDependencyError, PipelineError

try:
    from lpld_pipeline.bnstats import (
        ClassBNStats,
        ClassMoments,
        batchnorm_layers,
        compute_class_stats,
        load_class_stats,
        save_class_stats,
        squeeze,
    )
    from lpld_pipeline.data import ImageDataset, build_dataset, load_digits_images
    from lpld_pipeline.imagefolder import read_image_folder
    from lpld_pipeline.relabel import RelabelResult, relabel, relabel_entries, store_records
    from lpld_pipeline.run import RunReport, format_report, run
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
        load_teacher,
        load_teacher_checkpoint,
        make_teacher,
        save_teacher_checkpoint,
        state_dict_sha256,
        teacher_accuracy,
    )
    from lpld_pipeline.train import (
        DistillationStep,
        TrainResult,
        build_student,
        evaluate,
        kd_loss,
        load_student_checkpoint,
        lr_factor,
        train,
    )

except ModuleNotFoundError as _exc:  # torch, torchvision, ...: the pipeline extra is not installed
    if (_exc.name or "").partition(".")[0] in ("lpldstore", "lpld_pipeline"):
        raise
    _MISSING = _exc.name

    def __getattr__(name: str) -> object:
        if name in __all__:
            raise MissingDependencyError(
                f"lpld_pipeline.{name} needs {_MISSING}, which is not installed; install the pipeline's "
                "dependencies with `pip install 'lpldstore[pipeline]'`."
            )
        raise AttributeError(f"module 'lpld_pipeline' has no attribute {name!r}")


__all__ = [
    "NORMALIZATIONS",
    "RELABEL_PRESETS",
    "RUN_PRESETS",
    "SQUEEZE_PRESETS",
    "SYNTHESIS_PRESETS",
    "TRAIN_PRESETS",
    "ArtifactError",
    "ClassBNStats",
    "ClassMoments",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DistillationStep",
    "ImageDataset",
    "MissingDependencyError",
    "PipelineError",
    "RelabelResult",
    "RelabelStageConfig",
    "RunConfig",
    "RunReport",
    "SqueezeConfig",
    "SynthesisConfig",
    "SynthesisResult",
    "Teacher",
    "TeacherConfig",
    "TeacherSpec",
    "TinyResNet",
    "TrainConfig",
    "TrainResult",
    "batchnorm_layers",
    "build_dataset",
    "build_model",
    "build_student",
    "compute_class_stats",
    "config_from_dict",
    "config_to_dict",
    "evaluate",
    "format_report",
    "kd_loss",
    "load_class_stats",
    "load_digits_images",
    "load_synthesized",
    "load_student_checkpoint",
    "load_teacher",
    "load_teacher_checkpoint",
    "lr_factor",
    "make_teacher",
    "plan_groups",
    "read_image_folder",
    "relabel",
    "relabel_entries",
    "resolve_config",
    "run",
    "save_class_stats",
    "save_imagefolder",
    "save_teacher_checkpoint",
    "squeeze",
    "state_dict_sha256",
    "store_records",
    "synthesize",
    "synthesize_images",
    "teacher_accuracy",
    "train",
]
