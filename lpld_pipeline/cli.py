"""The ``lpld`` command line: one subcommand per pipeline stage, and ``verify --teacher``.

Every stage resolves its typed config the same way (``--preset``, then ``--config FILE``, then
``--set key=value`` overrides, last wins) and records the resolved config with its output. A new
stage is one entry in ``_STAGES``; its code is imported only when it runs, so a missing optional
dependency is reported by name instead of failing at start-up.

    lpld squeeze --preset demo --out runs/demo/squeeze
    lpld synthesize --preset demo --squeeze-dir runs/demo/squeeze --out runs/demo/synth --set ipc=20
    lpld relabel --preset demo --squeeze-dir ... --synth-dir ... --out runs/demo/labels.zarr
    lpld train --preset demo --store runs/demo/labels.zarr --out runs/demo/train
    lpld run                     # the demo preset end to end, with a report
    lpld verify runs/demo/labels.zarr --teacher runs/demo/squeeze/teacher.pt
    lpld relabel --image-folder released/ --teacher r18.pth --teacher-arch resnet18 --out l.zarr
    torchrun --nproc-per-node 8 -m lpld_pipeline.cli synthesize --preset imagenet1k ...

No command prints a traceback: a library error or an OS error is one line on stderr and exit
status 2, Ctrl-C is one line and 130, and anything else is reported as an internal error (a bug;
``LPLD_DEBUG=1`` prints the traceback as well).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lpldstore
from lpld_pipeline.config import (
    RELABEL_PRESETS,
    RUN_PRESETS,
    SQUEEZE_PRESETS,
    SYNTHESIS_PRESETS,
    TRAIN_PRESETS,
    RelabelStageConfig,
    RunConfig,
    SqueezeConfig,
    SynthesisConfig,
    TrainConfig,
    config_to_dict,
    resolve_config,
)
from lpldstore.cli import EXTRAS, run_command

__all__ = ["main"]

# Third-party modules the pipeline needs beyond lpldstore's core come with its `pipeline` extra.
_EXTRAS = {**EXTRAS, **dict.fromkeys(("torch", "torchvision", "sklearn", "PIL", "scipy"), "pipeline")}


@dataclasses.dataclass(frozen=True)
class _Stage:
    help: str
    config_cls: type[Any]
    presets: Mapping[str, Any]
    # "module:function", imported when the stage runs.
    target: str
    # Whether rerunning an interrupted run of the stage continues it.
    resumes: bool
    # Flags that are shortcuts for overrides: flag name -> config key.
    shortcuts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Typed shortcuts: flag name -> (config key, argparse keywords such as type, nargs, choices).
    options: Mapping[str, tuple[str, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)
    # One line to print after the stage ran, from its return value.
    summary: Callable[[Any], str] | None = None


def _relabel_summary(r: Any) -> str:
    return (
        f"relabel: {r.store}: computed {r.entries_computed} entries on this rank "
        f"({r.entries_kept} kept of {r.entries_planned} planned) in {r.seconds:.1f} s"
    )


def _train_summary(r: Any) -> str:
    return (
        f"train: {r.out}: top-1 {r.top1:.4f} (best {r.best_top1:.4f}), {r.steps} steps in {r.seconds:.1f} s"
    )


_STAGES: dict[str, _Stage] = {
    "squeeze": _Stage(
        help="train or load a teacher and compute its exact class-wise BN statistics",
        config_cls=SqueezeConfig,
        presets=SQUEEZE_PRESETS,
        target="lpld_pipeline.bnstats:squeeze",
        resumes=False,
        shortcuts={"out": "out", "data_root": "data.root", "device": "device"},
    ),
    "synthesize": _Stage(
        help="class-wise recover of IPC images per class from a squeeze output",
        config_cls=SynthesisConfig,
        presets=SYNTHESIS_PRESETS,
        target="lpld_pipeline.synthesize:synthesize",
        resumes=True,
        shortcuts={"out": "out", "squeeze_dir": "squeeze_dir", "device": "device"},
    ),
    "relabel": _Stage(
        help="the teacher's soft labels for the kept entries of a pruning plan, into an lpldstore store",
        config_cls=RelabelStageConfig,
        presets=RELABEL_PRESETS,
        target="lpld_pipeline.relabel:relabel",
        resumes=True,
        shortcuts={
            "out": "out",
            "squeeze_dir": "squeeze_dir",
            "synth_dir": "synth_dir",
            "image_folder": "image_folder",
            "teacher": "teacher",
            "teacher_arch": "teacher_arch",
            "device": "device",
        },
        options={
            "image_size": ("image_size", {"type": int, "metavar": "N"}),
            "mean": ("mean", {"type": float, "nargs": 3, "metavar": ("R", "G", "B")}),
            "std": ("std", {"type": float, "nargs": 3, "metavar": ("R", "G", "B")}),
            "sampler": ("sampler", {"choices": ("lpldstore", "sre2l")}),
        },
        summary=_relabel_summary,
    ),
    "train": _Stage(
        help="train a student from a store with the pool loader (KL at temperature T)",
        config_cls=TrainConfig,
        presets=TRAIN_PRESETS,
        target="lpld_pipeline.train:train",
        resumes=True,
        shortcuts={"store": "store", "out": "out", "val_root": "val.root", "device": "device"},
        summary=_train_summary,
    ),
    "run": _Stage(
        help="all stages from one config (squeeze, synthesize, relabel, train) and a final report",
        config_cls=RunConfig,
        presets=RUN_PRESETS,
        target="lpld_pipeline.run:run",
        resumes=True,
        shortcuts={"out": "out", "device": "device"},
    ),
}


def _version() -> str:
    return (
        f"lpld {lpldstore.__version__} (lpldstore {lpldstore.__version__}, format {lpldstore.FORMAT_VERSION})"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpld", description="The LPLD distillation pipeline.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, stage in _STAGES.items():
        p = sub.add_parser(name, help=stage.help, description=stage.help)
        p.add_argument(
            "--preset", default="demo", choices=sorted(stage.presets), help="base config (default: demo)"
        )
        p.add_argument("--config", metavar="FILE", help="JSON (or YAML) file layered over the preset")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one field, dotted for nested ones (repeatable), e.g. --set teacher.arch=resnet50",
        )
        for flag, key in stage.shortcuts.items():
            p.add_argument(
                f"--{flag.replace('_', '-')}", dest=flag, metavar="VALUE", help=f"same as --set {key}=..."
            )
        for flag, (key, kwargs) in stage.options.items():
            p.add_argument(
                f"--{flag.replace('_', '-')}", dest=flag, help=f"same as --set {key}=...", **kwargs
            )
        p.add_argument(
            "--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bars"
        )
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    verify = sub.add_parser(
        "verify",
        help="check a store's chunks, then re-run its teacher on sampled entries and compare the logits",
        description="Runs lpldstore's chunk check (`lpldstore verify`), then replays sampled entries "
        "through the teacher; exit 1 on any problem or logit mismatch.",
    )
    verify.add_argument("store", help="store directory, .zip of one, or URL")
    verify.add_argument(
        "--teacher",
        required=True,
        metavar="FILE",
        help="the teacher: an lpld-teacher checkpoint (teacher.pt), a TorchScript file, or a plain state "
        "dict with --teacher-arch",
    )
    verify.add_argument(
        "--teacher-arch",
        default="",
        metavar="NAME",
        help="the model of a plain state dict: a torchvision name (resnet18) or timm:NAME",
    )
    verify.add_argument(
        "--mean",
        type=float,
        nargs=3,
        metavar=("R", "G", "B"),
        help="the teacher's input mean (default: the one the store records)",
    )
    verify.add_argument(
        "--std",
        type=float,
        nargs=3,
        metavar=("R", "G", "B"),
        help="the teacher's input std (default: the one the store records)",
    )
    verify.add_argument("--quiet", action="store_true", help="accepted for symmetry; verify shows no bars")
    verify.add_argument("--entries", type=int, default=8, help="entries to re-run the teacher on (default 8)")
    verify.add_argument(
        "--override-kernel", action="store_true", help="replay a store made with another crop kernel anyway"
    )
    verify.add_argument(
        "--json", action="store_true", help="one JSON document: the chunk check plus 'teacher'"
    )
    return parser


def _run_stage(stage: _Stage, args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    flags = {**stage.shortcuts, **{flag: key for flag, (key, _) in stage.options.items()}}
    for flag, key in flags.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if args.no_progress:
        overrides.append("progress=false")
    config = resolve_config(
        stage.config_cls, stage.presets, preset=args.preset, file=args.config, overrides=overrides
    )
    if args.print_config:
        print(json.dumps(config_to_dict(config), indent=2))
        return 0
    module, _, function = stage.target.partition(":")
    result = getattr(importlib.import_module(module), function)(config)
    if stage.summary is not None:
        print(stage.summary(result))
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    from lpld_pipeline.check import check_against_teacher, format_teacher_report

    chunks = lpldstore.verify_store(args.store)
    report = check_against_teacher(
        args.store,
        args.teacher,
        entries=args.entries,
        override_kernel=args.override_kernel,
        arch=args.teacher_arch,
        mean=args.mean,
        std=args.std,
    )
    if args.json:
        print(json.dumps({**chunks.to_dict(), "teacher": report.to_dict()}, indent=2))
    else:
        for problem in chunks.problems:
            print(problem)
        verdict = "OK" if chunks.ok else f"{len(chunks.problems)} problem(s)"
        print(f"{chunks.source}: {chunks.committed}/{chunks.entries} entries committed; {verdict}")
        print(format_teacher_report(report))
    return 0 if chunks.ok and report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lpld`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]  # `lpld` alone runs the demo end to end
    args = _parser().parse_args(argv)
    name = str(args.stage)
    stage = _STAGES.get(name)
    resumes = stage is not None and stage.resumes
    return run_command(
        "lpld",
        name,
        lambda: _run_stage(stage, args) if stage is not None else _run_verify(args),
        interrupted_hint="rerun the same command to resume" if resumes else "",
        extras=_EXTRAS,
    )


if __name__ == "__main__":
    raise SystemExit(main())
