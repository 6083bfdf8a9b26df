"""Converters registered by (source, target), and the checks made before a job starts.

The API lists `supported()` and refuses an unknown pair or bad options at once, from the same
table that the worker uses to run the conversion (DESIGN.md, "Registries over if/elif chains").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import ConversionError, Converter

# Names users may type for a format; the canonical names are the values.
ALIASES: dict[str, str] = {
    "jpg": "jpeg",
    "jpe": "jpeg",
    "tif": "tiff",
    "markdown": "md",
    "htm": "html",
    "text": "txt",
}


def normalize_format(name: str) -> str:
    """"JPG", ".jpg" and "jpeg" are all "jpeg"."""
    key = name.strip().lower().lstrip(".")
    return ALIASES.get(key, key)


@dataclass(frozen=True)
class OptionSpec:
    """One integer option: its inclusive range, default (None: absent unless given) and help text."""

    minimum: int | None = None
    maximum: int | None = None
    default: int | None = None
    help: str = ""

    def check(self, name: str, value: Any) -> int:
        # bool is an int in Python; `true` is never a sensible width.
        if isinstance(value, bool):
            raise ConversionError("bad_option", f"{name} must be a whole number, not {value!r}")
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            value = int(value.strip())  # form fields arrive as text
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ConversionError("bad_option", f"{name} must be a whole number, not {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConversionError("bad_option", f"{name} must be at least {self.minimum}, not {value}")
        if self.maximum is not None and value > self.maximum:
            raise ConversionError("bad_option", f"{name} must be at most {self.maximum}, not {value}")
        return value


@dataclass(frozen=True, eq=False)
class Conversion:
    source: str
    target: str
    func: Converter
    options: Mapping[str, OptionSpec] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.source} → {self.target}"


_REGISTRY: dict[tuple[str, str], Conversion] = {}


def register(
    source: str, target: str, options: Mapping[str, OptionSpec] | None = None
) -> Callable[[Converter], Converter]:
    """Decorator: make `func` the converter for source → target. Stack it for several pairs."""

    def decorate(func: Converter) -> Converter:
        key = (normalize_format(source), normalize_format(target))
        if key in _REGISTRY:
            raise ValueError(f"{key[0]} → {key[1]} is registered twice")
        _REGISTRY[key] = Conversion(key[0], key[1], func, dict(options or {}))
        return func

    return decorate


def supported() -> dict[str, list[str]]:
    """Every source format → its sorted targets."""
    table: dict[str, list[str]] = {}
    for source, target in _REGISTRY:
        table.setdefault(source, []).append(target)
    return {source: sorted(targets) for source, targets in sorted(table.items())}


def lookup(source: str, target: str) -> Conversion:
    """The registered conversion, or ConversionError("unsupported_conversion") naming the options."""
    src, dst = normalize_format(source), normalize_format(target)
    conversion = _REGISTRY.get((src, dst))
    if conversion is not None:
        return conversion
    table = supported()
    if src in table:
        detail = f"{src} → {dst} is not supported; from {src}: {', '.join(table[src])}"
    else:
        shown = src or "this file type"
        detail = f"{shown} → {dst} is not supported; supported sources: {', '.join(table)}"
    raise ConversionError("unsupported_conversion", detail)


def validate_options(conversion: Conversion, raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """Checked options with defaults filled in; anything unknown or out of range is "bad_option"."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ConversionError("bad_option", "options must be an object of name → value")
    unknown = sorted(str(name) for name in raw if name not in conversion.options)
    if unknown:
        allowed = ", ".join(sorted(conversion.options))
        takes = f"allowed: {allowed}" if allowed else "it takes no options"
        raise ConversionError(
            "bad_option", f"unknown option {', '.join(unknown)} for {conversion.label}; {takes}"
        )
    checked: dict[str, Any] = {}
    for name, spec in conversion.options.items():
        if name in raw and raw[name] is not None:
            checked[name] = spec.check(name, raw[name])
        elif spec.default is not None:
            checked[name] = spec.default
    return checked
