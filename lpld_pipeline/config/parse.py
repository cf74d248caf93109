"""Configs from layers: a preset, then a JSON (or YAML) file, then ``key=value`` overrides.

Dotted keys reach nested fields (``teacher.arch=resnet50``); values are parsed as JSON and fall
back to plain strings. Unknown keys are rejected by name, so a typo fails loudly; every value is
coerced to its field's type or refused with what was expected. The resolved config is JSON
(:func:`config_to_dict`) and is saved beside every output.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from lpld_pipeline.config.records import require
from lpld_pipeline.errors import ConfigError, MissingDependencyError

__all__ = ["config_from_dict", "config_to_dict", "resolve_config"]

C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as a JSON-ready dict (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return config_from_dict(tp, value, prefix=f"{key}.")
    if origin is Literal:
        require(value in typing.get_args(tp), f"{key} one of {list(typing.get_args(tp))}", value)
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(arg, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"Expected {key} of type {tp}. Got {value!r} instead.")
    if origin is tuple:
        args = typing.get_args(tp)
        require(isinstance(value, Sequence) and not isinstance(value, str), f"{key} as a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        require(len(value) == len(args), f"{key} as a list of {len(args)} values", value)
        return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))
    if origin in (dict, Mapping):
        require(isinstance(value, Mapping), f"{key} a JSON object", value)
        return dict(value)
    if tp is type(None):
        require(value is None, f"{key} null", value)
        return None
    if tp is bool:
        require(isinstance(value, bool), f"{key} true or false", value)
        return value
    if tp is int:
        require(isinstance(value, int) and not isinstance(value, bool), f"{key} an integer", value)
        return value
    if tp is float:
        require(isinstance(value, int | float) and not isinstance(value, bool), f"{key} a number", value)
        return float(value)
    if tp is str:
        require(isinstance(value, str), f"{key} a string", value)
        return value
    raise ConfigError(f"Cannot parse {key}: unsupported field type {tp}.")  # pragma: no cover


def config_from_dict(cls: type[C], data: Any, *, prefix: str = "") -> C:
    """Build ``cls`` from a (possibly partial) dict; unknown keys are rejected by name."""
    name = cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"Expected a JSON object for {prefix or name}. Got {type(data).__name__} instead.")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"Unknown key(s) {[prefix + k for k in unknown]} for {name}; expected only "
            f"{sorted(prefix + k for k in fields)}. Check for a typo."
        )
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - every field has a default
        raise ConfigError(f"Invalid {name}: {exc}") from exc


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_file(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Expected a config file at {str(path)!r}. Got no such file instead.")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError as exc:
            raise MissingDependencyError(
                f"Config file {str(path)!r} is YAML, which needs PyYAML: install it with "
                "`pip install pyyaml`, or write the config as JSON."
            ) from exc
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Config file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"Expected a JSON object in {str(path)!r}. Got {type(data).__name__} instead.")
    return data


def _parse_override(item: str) -> dict[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Expected an override of the form key=value (e.g. ipc=50). Got {item!r} instead.")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # plain strings need no JSON quotes: teacher.arch=resnet50
    nested: dict[str, Any] = {}
    cursor = nested
    *parents, leaf = key.strip().split(".")
    for p in parents:
        cursor = cursor.setdefault(p, {})
    cursor[leaf] = value
    return nested


def resolve_config(
    cls: type[C],
    presets: Mapping[str, C],
    *,
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> C:
    """Resolve ``cls`` from preset, then file, then ``key=value`` overrides (last wins)."""
    if preset is None:
        layered: dict[str, Any] = config_to_dict(cls())
    elif preset in presets:
        layered = config_to_dict(presets[preset])
    else:
        raise ConfigError(f"Expected a preset in {sorted(presets)}. Got {preset!r} instead.")
    if file is not None:
        layered = _merge(layered, _read_file(Path(file)))
    for item in overrides:
        layered = _merge(layered, _parse_override(item))
    return config_from_dict(cls, layered)
