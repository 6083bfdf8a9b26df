"""Which format a file really is, from its content; the uploaded name is not trusted.

Binary formats are recognised by their magic bytes only. A file that is valid UTF-8 without NUL
bytes is text: csv or md. Only then does the declared name matter, to break the tie between the
text formats; without a telling extension a heuristic decides (consistent delimiter counts → csv).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
import struct
import zipfile
from collections import Counter
from pathlib import Path, PureWindowsPath

SAMPLE_BYTES = 64 * 1024
CSV_DELIMITERS = (",", ";", "\t")
_CSV_EXTENSIONS = {".csv"}
_MD_EXTENSIONS = {".md", ".markdown", ".txt"}
# Header sizes of the BMP DIB variants (BITMAPCOREHEADER … BITMAPV5HEADER): "BM" alone is too weak,
# a CSV may well start with "BMW,".
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_XLSX_HINTS = (b"[Content_Types].xml", b"xl/")
# A first line that is a Markdown heading, list item, quote or code fence settles it.
_MD_START_RE = re.compile(r"(#{1,6}\s|[-*+]\s|>\s?|```|~~~)")


def sniff(path: Path, declared_name: str | None = None) -> str | None:
    """The source format of `path` (png, jpeg, webp, gif, bmp, tiff, pdf, xlsx, csv, md) or None."""
    with path.open("rb") as f:
        head = f.read(SAMPLE_BYTES)
        at_end = not f.read(1)
    binary = _sniff_binary(path, head)
    if binary is not None:
        return binary
    if not _looks_like_utf8_text(head, complete=at_end):
        return None
    ext = _extension(declared_name)
    if ext in _CSV_EXTENSIONS:
        return "csv"
    if ext in _MD_EXTENSIONS:
        return "md"
    if not head.strip():
        return None  # an empty file says nothing about itself
    text = head.decode("utf-8-sig", errors="ignore")
    if not at_end:
        text = text[: text.rfind("\n") + 1] or text  # drop the line the sample cut in two
    if _MD_START_RE.match(text.lstrip()):
        return "md"
    return "csv" if csv_delimiter(text) is not None else "md"


def _sniff_binary(path: Path, head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack("<I", head[14:18])[0] in _BMP_DIB_SIZES:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n\x00").startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path, head)
    return None


def _sniff_zip(path: Path, head: bytes) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        # A truncated workbook has no central directory, but its local headers still name the
        # parts: call it xlsx so that the user hears "corrupt" rather than "unsupported".
        return "xlsx" if any(hint in head for hint in _XLSX_HINTS) else None
    return "xlsx" if "xl/workbook.xml" in names else None


def _looks_like_utf8_text(head: bytes, *, complete: bool) -> bool:
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError:
        return False
    return True


def _extension(declared_name: str | None) -> str:
    if not declared_name:
        return ""
    return PureWindowsPath(declared_name).suffix.lower()  # handles both / and \ separators


def csv_delimiter(text: str, max_rows: int = 50) -> str | None:
    """The delimiter (comma, semicolon or tab) that splits `text` into a consistent table, or None.

    Consistent: at least two rows, the first (the header) has two or more fields, and at least
    80% of the rows have as many fields as it. Quoted fields are honoured. Ties go to the
    delimiter giving more columns.
    """
    best: tuple[int, str] | None = None
    for delimiter in CSV_DELIMITERS:
        try:
            reader = csv.reader(io.StringIO(text), delimiter=delimiter)
            rows = [row for row in itertools.islice(reader, max_rows) if row]
        except csv.Error:
            continue
        if len(rows) < 2:
            continue
        width = len(rows[0])
        if width < 2:
            continue
        counts = Counter(len(row) for row in rows)
        if counts[width] / len(rows) < 0.8:
            continue
        if best is None or width > best[0]:
            best = (width, delimiter)
    return best[1] if best else None
