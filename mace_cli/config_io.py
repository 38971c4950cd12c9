"""Load one YAML or TOML file into a validated, frozen :class:`~mace_core.config.MaceConfig`.

Errors are one line and name the field: ``configs/x.yaml: lora.learning_rate: Input should be less than or
equal to 1 (got 5.0)``. Concepts may be written as mappings (``{name, type, mapping, synonyms}``) or as
strings ``"name:type:mapping"``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mace_core.concepts import CONCEPT_TYPES, Concept
from mace_core.config import MaceConfig


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate (message is one line)."""


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a hostile 10,000-character input stays a short line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def _loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("function-after", "function-before") and not str(part).startswith("function-"):
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(err: ValidationError) -> str:
    """``field.path: message (got value)`` for every error, joined with '; ' on one line."""
    parts = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(got, (dict, list)) else f" (got {_show(got)})"
        parts.append(f"{_loc(e['loc'])}: {msg}{shown}")
    return " ".join("; ".join(parts).split())


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a .yaml/.yml/.toml file into a dict (ConfigError if unreadable or not a mapping)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif p.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{p}: unknown config format {p.suffix!r}: use .yaml, .yml or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot parse: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def _concept_entry(entry: Any) -> Any:
    if isinstance(entry, str):
        parts = entry.split(":")
        if len(parts) != 3:
            raise ConfigError(f"concept {entry!r}: write it as 'name:type:mapping' or as a mapping")
        return {"name": parts[0], "type": parts[1], "mapping": parts[2]}
    return entry


def config_from_mapping(data: Mapping[str, Any], source: str = "config") -> MaceConfig:
    """Validate a dict into MaceConfig; ConfigError naming the field on failure."""
    data = dict(data)
    if isinstance(data.get("concepts"), list):
        data["concepts"] = [_concept_entry(c) for c in data["concepts"]]
    try:
        return MaceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None


def load_config(path: str | Path, store: str | None = None, name: str | None = None) -> MaceConfig:
    """Read and validate a config file; ``store`` overrides ``execution.store``, ``name`` the run name."""
    data = read_mapping(path)
    if store is not None:
        data["execution"] = {**(data.get("execution") or {}), "store": store}
    if name is not None:
        data["name"] = name  # validated with the rest (a name is a manifest file name)
    return config_from_mapping(data, str(path))


def parse_concept(spec: str, existing: tuple[Concept, ...] = ()) -> Concept:
    """``name[:type[:mapping]]`` -> Concept; type and mapping default to those of the run's concepts.

    A missing type is the run's most common type; a missing mapping is the one mapping the run uses for
    that type (an error names what to write when the run uses several or none).
    """
    parts = [p.strip() for p in spec.split(":")]
    if len(parts) > 3 or not parts[0]:
        raise ConfigError(f"concept {_show(spec)}: write it as name[:type[:mapping]], e.g. 'dog:object:forest'")
    name = parts[0]
    types = [c.type for c in existing]
    ctype = parts[1] if len(parts) > 1 and parts[1] else (max(sorted(set(types)), key=types.count) if types
                                                          else "object")
    if ctype not in CONCEPT_TYPES:
        raise ConfigError(f"concept {_show(spec)}: unknown type {_show(ctype)}, use one of {', '.join(CONCEPT_TYPES)}")
    if len(parts) > 2 and parts[2]:
        mapping = parts[2]
    else:
        mappings = sorted({c.mapping for c in existing if c.type == ctype})
        if len(mappings) != 1:
            raise ConfigError(f"concept {_show(spec)}: give its mapping, e.g. '{name[:40]}:{ctype}:<mapping phrase>'")
        mapping = mappings[0]
    try:
        return Concept(name=name, type=ctype, mapping=mapping)
    except ValidationError as exc:
        raise ConfigError(f"concept {_show(spec)}: {format_validation_error(exc)}") from None
