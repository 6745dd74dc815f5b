"""Typed readers for environment variables.

Only ``config/`` reads the environment (one home for settings). Every helper refuses values it
cannot interpret instead of guessing: ``"flase"`` is an error, not ``True``.
``NAME_FILE`` variants let secrets come from mounted files (Docker/K8s secrets).
"""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class EnvError(ValueError):
    pass


def _raw(name: str) -> str | None:
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        return Path(file_path).read_text().strip()
    return os.environ.get(name)


def env_str(name: str, default: str) -> str:
    value = _raw(name)
    return default if value is None else value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise EnvError(f"{name}={value!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _raw(name)
    if value is None or value.strip() == "":
        return default
    try:
        parsed = int(value.strip().replace("_", ""))
    except ValueError as exc:
        raise EnvError(f"{name}={value!r} is not an integer") from exc
    if minimum is not None and parsed < minimum:
        raise EnvError(f"{name}={parsed} is below the minimum {minimum}")
    return parsed


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = _raw(name)
    if value is None or value.strip() == "":
        return default
    try:
        parsed = float(value.strip())
    except ValueError as exc:
        raise EnvError(f"{name}={value!r} is not a number") from exc
    if minimum is not None and parsed < minimum:
        raise EnvError(f"{name}={parsed} is below the minimum {minimum}")
    return parsed


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_prefixed(prefix: str) -> dict[str, str]:
    """Every ``<prefix><NAME>`` (or ``<prefix><NAME>_FILE``) variable as ``{NAME: value}``."""
    found: dict[str, str] = {}
    for key in os.environ:
        if key.startswith(prefix) and len(key) > len(prefix):
            name = key.removeprefix(prefix).removesuffix("_FILE")
            if name:
                found[name] = env_str(prefix + name, "")
    return found
