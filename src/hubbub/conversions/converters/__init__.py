"""Pure file converters: sniff a file's format, look up a conversion, run it with progress.

No Django, no database, no network: the job layer calls `convert()` (in a worker) with paths it
owns and a progress callback, and turns `ConversionError` into a failed job. See
docs/conversions.md for formats, options and limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import images, markdown, pdf, tables  # noqa: F401 - importing registers the converters
from .base import Cancelled, ConversionError, Limits, MonotonicProgress, Output, Progress, limits_scope
from .registry import Conversion, OptionSpec, lookup, normalize_format, supported, validate_options
from .sniff import sniff

__all__ = [
    "Cancelled",
    "Conversion",
    "ConversionError",
    "Limits",
    "OptionSpec",
    "Output",
    "Progress",
    "convert",
    "lookup",
    "normalize_format",
    "sniff",
    "supported",
    "validate_options",
]


def convert(
    source_fmt: str,
    target: str,
    src: Path,
    dst: Path,
    options: dict[str, Any],
    progress: Progress,
    *,
    limits: Limits | None = None,
) -> Output:
    """Convert `src` (already sniffed as `source_fmt`) to `target`, writing `dst`.

    `options` are validated here again (cheap, and the worker must not trust a stored row).
    `progress` sees 0..100, never decreasing, ending at 100 on success; it may raise `Cancelled`.
    Raises ConversionError (the input's fault; show `.detail`), Cancelled (from the callback), or
    anything else for faults of this machine (OSError on disk full…). On any exception `dst` is
    removed, so a half-written file is never mistaken for a result.
    """
    conversion = lookup(source_fmt, target)
    checked = validate_options(conversion, options)
    report = MonotonicProgress(progress)
    try:
        with limits_scope(limits):
            report(0, "starting")
            output = conversion.func(src, dst, checked, report)
            if report.last < 100:
                report(100, "done")
            return output
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
