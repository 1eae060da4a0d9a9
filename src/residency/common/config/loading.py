"""Turn TOML files into pydantic models, with one-line errors that name file, field and fix."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from residency.common.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, raising ``ConfigError`` for a missing or malformed file."""
    if not path.exists():
        raise ConfigError(f"{path}: file not found; fix: check the path")
    if not path.is_file():
        raise ConfigError(f"{path}: is a directory, not a TOML file; fix: pass the file path")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}); fix: save it as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}; fix: correct the syntax") from exc


_NAMED_FIELD = re.compile(r"^[a-z_]+(\.[a-z_]+)+[: ]")


def describe_validation_error(path: Path, exc: ValidationError) -> str:
    """Render the first pydantic error as ``FILE: field.path: problem; fix: ...``."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{path}: {loc}: unknown key; fix: remove it or check its spelling"
    if kind == "missing":
        return f"{path}: {loc}: required key is missing; fix: add it"
    message = err["msg"].removeprefix("Value error, ")
    if not err["loc"] and _NAMED_FIELD.match(message):  # a check across sections names its field
        return f"{path}: {message}"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    if "; fix: " in message:  # the validator already says how to fix it
        return f"{path}: {loc}: {message}"
    return f"{path}: {loc}: {message}{shown}; fix: correct this value"


def load_model(path: Path, model: type[M], *, context: dict[str, Any] | None = None) -> M:
    """Read ``path`` and validate it as ``model``; every failure is one ``ConfigError`` line."""
    raw = read_toml(path)
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc)) from exc
