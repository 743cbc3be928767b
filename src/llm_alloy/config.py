"""Reading YAML configs into pydantic models, with one-line errors naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

C = TypeVar("C", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line: file, field, what was expected."""


def describe_validation_error(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "required field is missing"
    elif first["type"] == "extra_forbidden":
        message = "unknown field"
    elif "input" in first and first["type"] not in ("value_error",):
        message = f"{message} (got {first['input']!r})"
    more = len(error.errors()) - 1
    return f"{source}: {location}: {message}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def parse_config(data: Any, cls: type[C], source: str = "config") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(source, error)) from None


def load_config(path: str | Path, cls: type[C]) -> C:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror or error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return parse_config(data, cls, str(path))
