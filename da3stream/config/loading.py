"""Loading configs: YAML presets, nested dicts and dotted overrides into frozen dataclasses."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Mapping, Optional

from da3stream.errors import ConfigError

from da3stream.config.tree import Config


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (JSON-safe) of a config dataclass."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def build_dataclass(cls: type, data: Mapping[str, Any], path: str = "") -> Any:
    """An instance of the config dataclass ``cls`` from a nested mapping (YAML-style values).

    Unknown keys raise :class:`ConfigError` with a suggestion; values are checked
    and coerced to the field types; ``path`` prefixes key names in messages.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=1, cutoff=0.5)
            hint = f"; did you mean {(path + '.' if path else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build_dataclass(hint, value, full)
        else:
            kwargs[key] = _coerce(hint, value, full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if hint is int:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not value.is_integer())):  # NaN and inf are not integers either
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # value != value: NaN
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{path}: {value!r} is out of range for a number") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return tuple(value)
    return value


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(config: Any = None, overrides: Optional[Mapping[str, Any]] = None) -> Config:
    """Resolve a config from None, a YAML path, a nested dict or a :class:`Config`.

    ``overrides`` (nested dict, or dotted keys such as ``{"loop.enabled": False}``)
    are applied on top.
    """
    if isinstance(config, Config):
        base = to_dict(config)
    elif config is None:
        base = {}
    elif isinstance(config, (str, Path)):
        p = Path(config)
        base = _read_yaml(p)
        try:
            build_dataclass(Config, base, "")
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    elif isinstance(config, Mapping):
        base = dict(config)
    else:
        raise ConfigError(f"config must be a path, a mapping or a Config, got {type(config).__name__}")
    if overrides:
        base = _merge(base, _undot(overrides))
    return build_dataclass(Config, _undot(base), "")


def _undot(d: Mapping[str, Any]) -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            v = _undot(v)
        parts = str(k).split(".")
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"config key {k!r} conflicts with a scalar value")
        if isinstance(v, dict) and isinstance(cur.get(parts[-1]), dict):
            cur[parts[-1]] = _merge(cur[parts[-1]], v)
        else:
            cur[parts[-1]] = v
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> its docstring (the string literal under it in the source)."""
    import ast
    import inspect
    import textwrap

    src = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(src).body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(getattr(b, "value", None), ast.Constant):
            docs[a.target.id] = str(b.value.value)
    return docs
