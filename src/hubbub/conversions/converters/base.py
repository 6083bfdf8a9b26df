"""The vocabulary shared by every converter: errors, progress, outputs and limits.

Converters are pure functions (no Django, no database, no network) with the signature
`Converter`: they read `source`, write `destination`, and report progress through a callback that
may raise `Cancelled` to stop them. Anything wrong with the *input* is a `ConversionError`; errors
of the machine itself (disk full, out of file handles) propagate unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Progress = Callable[[int, str], None]
"""`progress(percent, stage)`: percent 0..100, never decreasing; stage is short ("page 3 of 150").

The callback may raise `Cancelled`; converters call it regularly (per page, per few thousand rows,
per stage) so that a cancellation is noticed within a fraction of a second of work.
"""

ErrorCode = Literal["corrupt", "too_large", "bad_option", "unsupported_conversion"]
ERROR_CODES: frozenset[str] = frozenset({"corrupt", "too_large", "bad_option", "unsupported_conversion"})


class ConversionError(Exception):
    """The input cannot be converted; `.detail` is one line fit to show the user.

    Codes: "corrupt" (not a valid file of its format, or unreadable: truncated, encrypted, not
    UTF-8), "too_large" (over a limit in `Limits`, including decompression/XML bombs),
    "bad_option" (an option unknown, of the wrong type, out of range, or impossible for this file,
    such as a page past the end), "unsupported_conversion" (no converter for the pair).
    """

    def __init__(self, code: ErrorCode, detail: str) -> None:
        if code not in ERROR_CODES:  # a programming error, not a user one
            raise ValueError(f"unknown conversion error code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code: ErrorCode = code
        self.detail = detail


class Cancelled(Exception):
    """Raised by a progress callback to stop a conversion; converters let it propagate."""


@dataclass(frozen=True)
class Output:
    """What a converter wrote: the file extension (without a dot) and its MIME type.

    It can differ from the requested target: pdf → png of every page writes a zip.
    """

    extension: str
    content_type: str


Options = dict[str, Any]
Converter = Callable[[Path, Path, Options, Progress], Output]


@dataclass(frozen=True)
class Limits:
    """Caps on input size and work; anything over one is refused with "too_large"."""

    # Images: decoded pixels (width x height). Also installed as PIL.Image.MAX_IMAGE_PIXELS.
    max_image_pixels: int = 50_000_000
    # PDFs: pages per document, and pixels per rasterised page (pages larger than this at the
    # default resolution are rendered at a lower resolution rather than refused).
    max_pdf_pages: int = 500
    max_render_pixels: int = 25_000_000
    # XLSX: checked on the zip directory BEFORE openpyxl opens the file.
    max_xlsx_uncompressed_bytes: int = 200 * 1024 * 1024
    max_xlsx_members: int = 10_000
    # A member larger than 1 MiB that expands more than this is treated as a zip bomb; real
    # worksheet XML compresses 5-30x.
    max_xlsx_compression_ratio: int = 200
    # Rows read from or written to a worksheet (Excel itself stops at 1,048,576).
    max_xlsx_rows: int = 1_000_000
    # Text inputs, in bytes.
    max_csv_bytes: int = 100 * 1024 * 1024
    max_markdown_bytes: int = 5 * 1024 * 1024
    # Any result, in bytes (JSON repeats the header in every object; one shared string may be
    # referenced by a million cells; a page zip grows with the page count).
    max_output_bytes: int = 1024 * 1024 * 1024


DEFAULT_LIMITS = Limits()
_limits: ContextVar[Limits] = ContextVar("hubbub_conversion_limits", default=DEFAULT_LIMITS)


def current_limits() -> Limits:
    """The limits in force for the conversion running in this context."""
    return _limits.get()


@contextlib.contextmanager
def limits_scope(limits: Limits | None) -> Iterator[Limits]:
    """Run a block under `limits` (None: the defaults); context-local, so safe across threads."""
    token = _limits.set(limits or DEFAULT_LIMITS)
    try:
        yield _limits.get()
    finally:
        _limits.reset(token)


class OutputBudget:
    """Counts what a converter writes and refuses to go past `Limits.max_output_bytes`."""

    def __init__(self) -> None:
        self.limit = current_limits().max_output_bytes
        self.used = 0

    def spend(self, amount: int) -> None:
        self.used += amount
        if self.used > self.limit:
            raise ConversionError("too_large", f"the result would be over {fmt_int(self.limit)} bytes")


class MonotonicProgress:
    """Wraps a `Progress` so that it only ever sees 0..100, never decreasing."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self.last = 0

    def __call__(self, percent: int, stage: str) -> None:
        percent = max(self.last, min(100, int(percent)))
        self.last = percent
        self._progress(percent, stage)


def fmt_int(n: int) -> str:
    """1234567 → "1,234,567", for messages."""
    return f"{n:,}"
