"""The ``lpld`` command line: one subcommand per pipeline stage.

Every stage resolves its typed config the same way (``--preset``, then ``--config FILE``, then
``--set key=value`` overrides, last wins) and records the resolved config with its output. A new
stage is one entry in ``_STAGES``.

    lpld squeeze --preset demo --out runs/demo/squeeze
    lpld synthesize --preset demo --squeeze-dir runs/demo/squeeze --out runs/demo/synth --set ipc=20
    lpld relabel --preset demo --squeeze-dir ... --synth-dir ... --out runs/demo/labels.zarr
    lpld train --preset demo --store runs/demo/labels.zarr --out runs/demo/train
    lpld run                     # the demo preset end to end, with a report
    torchrun --nproc-per-node 8 -m lpld_pipeline.cli synthesize --preset imagenet1k ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lpld_pipeline.bnstats import squeeze
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
from lpld_pipeline.errors import PipelineError
from lpld_pipeline.relabel import RelabelResult, relabel
from lpld_pipeline.run import run
from lpld_pipeline.synthesize import synthesize
from lpld_pipeline.train import TrainResult, train

__all__ = ["main"]


@dataclasses.dataclass(frozen=True)
class _Stage:
    help: str
    config_cls: type[Any]
    presets: Mapping[str, Any]
    run: Callable[[Any], Any]
    # Flags that are shortcuts for overrides: flag name -> config key.
    shortcuts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # One line to print after the stage ran, from its return value.
    summary: Callable[[Any], str] | None = None


def _relabel_summary(r: RelabelResult) -> str:
    return (
        f"relabel: {r.store}: computed {r.entries_computed} entries on this rank "
        f"({r.entries_kept} kept of {r.entries_planned} planned) in {r.seconds:.1f} s"
    )


def _train_summary(r: TrainResult) -> str:
    return (
        f"train: {r.out}: top-1 {r.top1:.4f} (best {r.best_top1:.4f}), {r.steps} steps in {r.seconds:.1f} s"
    )


_STAGES: dict[str, _Stage] = {
    "squeeze": _Stage(
        help="train or load a teacher and compute its exact class-wise BN statistics",
        config_cls=SqueezeConfig,
        presets=SQUEEZE_PRESETS,
        run=squeeze,
        shortcuts={"out": "out", "data_root": "data.root", "device": "device"},
    ),
    "synthesize": _Stage(
        help="class-wise recover of IPC images per class from a squeeze output",
        config_cls=SynthesisConfig,
        presets=SYNTHESIS_PRESETS,
        run=synthesize,
        shortcuts={"out": "out", "squeeze_dir": "squeeze_dir", "device": "device"},
    ),
    "relabel": _Stage(
        help="the teacher's soft labels for the kept entries of a pruning plan, into an lpldstore store",
        config_cls=RelabelStageConfig,
        presets=RELABEL_PRESETS,
        run=relabel,
        shortcuts={"out": "out", "squeeze_dir": "squeeze_dir", "synth_dir": "synth_dir", "device": "device"},
        summary=_relabel_summary,
    ),
    "train": _Stage(
        help="train a student from a store with the pool loader (KL at temperature T)",
        config_cls=TrainConfig,
        presets=TRAIN_PRESETS,
        run=train,
        shortcuts={"store": "store", "out": "out", "val_root": "val.root", "device": "device"},
        summary=_train_summary,
    ),
    "run": _Stage(
        help="all stages from one config (squeeze, synthesize, relabel, train) and a final report",
        config_cls=RunConfig,
        presets=RUN_PRESETS,
        run=run,
        shortcuts={"out": "out", "device": "device"},
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpld", description="The LPLD distillation pipeline.")
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
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lpld`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]  # `lpld` alone runs the demo end to end
    args = _parser().parse_args(argv)
    stage = _STAGES[args.stage]
    overrides = list(args.overrides)
    for flag, key in stage.shortcuts.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if args.no_progress:
        overrides.append("progress=false")
    try:
        config = resolve_config(
            stage.config_cls, stage.presets, preset=args.preset, file=args.config, overrides=overrides
        )
        if args.print_config:
            print(json.dumps(config_to_dict(config), indent=2))
            return 0
        result = stage.run(config)
        if stage.summary is not None:
            print(stage.summary(result))
    except PipelineError as exc:
        print(f"lpld {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
