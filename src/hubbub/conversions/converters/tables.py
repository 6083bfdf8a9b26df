"""Tables: csv → xlsx / json and xlsx → csv / json (the first worksheet).

CSV input: UTF-8 with or without a BOM; the delimiter (comma, semicolon or tab) is sniffed from
the first 64 KiB. The first non-blank row is the header; blank lines are skipped.

Ragged rows: a row SHORTER than the header gets null (json) or nothing (xlsx, csv) for the
missing columns. A row LONGER than the header is an error ("corrupt") when converting to json,
since its extra values have no key, unless the extra fields are empty (trailing delimiters, as
some exporters write), which are ignored. Towards xlsx and csv rows are copied as they are.

Types: CSV has none. Towards json every CSV value stays a string. Towards xlsx a value becomes a
number only when it is written exactly as that number would be ("42", "-1.5"; not "007", "1.50"
or "1e3"), so xlsx → csv gives the same text back; text starting with "=" stays text, never a
formula. Reading xlsx: cached formula results are used, dates become ISO 8601 text (a
midnight date-time becomes the date alone), numbers keep 15 significant digits (Excel's own
precision), rows with no value at all are dropped.

Safety: the zip directory is checked (member count, total uncompressed size, compression ratio)
and every XML part's prolog scanned for a DTD before openpyxl opens the file; openpyxl then
parses with defusedxml in read-only mode.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from .base import ConversionError, Options, Output, OutputBudget, Progress, current_limits, fmt_int
from .registry import register
from .sniff import SAMPLE_BYTES, csv_delimiter

if not openpyxl.DEFUSEDXML:  # pragma: no cover - a deployment error, not a runtime state
    raise ImportError("openpyxl must parse with defusedxml: install it and leave OPENPYXL_DEFUSEDXML unset")

ROWS_PER_REPORT = 2000
MAX_CELL_CHARS = 32_767  # Excel refuses longer cells
MAX_COLUMNS = 16_384  # Excel's XFD
_DTD_SCAN_BYTES = 4096
_RATIO_CHECK_FROM = 1024 * 1024  # small members may compress absurdly well and still be harmless
_XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_INT_RE = re.compile(r"-?(0|[1-9]\d{0,14})")
_FLOAT_RE = re.compile(r"-?(0|[1-9]\d*)\.\d+")


# --- CSV in -----------------------------------------------------------------------------------


def _csv_rows(src: Path, progress: Progress, start: int, end: int) -> Iterator[list[str]]:
    """The non-blank rows of a UTF-8 CSV, reporting progress by bytes read from start to end %."""
    limits = current_limits()
    size = src.stat().st_size
    if size > limits.max_csv_bytes:
        raise ConversionError(
            "too_large", f"the CSV is {fmt_int(size)} bytes; the limit is {fmt_int(limits.max_csv_bytes)}"
        )
    with src.open("rb") as raw:
        sample = raw.read(SAMPLE_BYTES).decode("utf-8-sig", errors="ignore")
        raw.seek(0)
        if size > SAMPLE_BYTES:
            sample = sample[: sample.rfind("\n") + 1] or sample
        delimiter = csv_delimiter(sample) or ","
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        count = 0
        try:
            for row in reader:
                count += 1
                if count % ROWS_PER_REPORT == 0:
                    done = raw.tell() / max(size, 1)
                    progress(start + int((end - start) * done), f"row {fmt_int(count)}")
                if row and any(row):
                    yield row
        except UnicodeDecodeError as exc:
            detail = f"the CSV is not UTF-8 text (line {reader.line_num + 1})"
            raise ConversionError("corrupt", detail) from exc
        except csv.Error as exc:
            detail = f"the CSV cannot be read at line {reader.line_num}: {exc}"
            raise ConversionError("corrupt", detail) from exc


def _header_keys(values: Iterable[Any]) -> list[str]:
    """JSON keys from a header row: blanks become column_N, repeats get _2, _3…"""
    keys: list[str] = []
    seen: set[str] = set()
    for index, value in enumerate(values, start=1):
        key = _csv_text(value).strip() or f"column_{index}"
        candidate, n = key, 1
        while candidate in seen:
            n += 1
            candidate = f"{key}_{n}"
        seen.add(candidate)
        keys.append(candidate)
    return keys


def _write_json_objects(
    dst: Path, header: list[str], rows: Iterator[list[Any]], where: str
) -> None:
    """Stream `[{header[i]: row[i]}…]`; where names the row in errors ("line" or "row")."""
    width = len(header)
    budget = OutputBudget()
    with dst.open("w", encoding="utf-8", newline="\n") as out:
        out.write("[")
        first = True
        for number, row in enumerate(rows, start=2):
            budget.spend(_estimated_size(row, header))  # before building a huge line
            if len(row) > width:
                extra = row[width:]
                if any(value not in (None, "") for value in extra):
                    raise ConversionError(
                        "corrupt",
                        f"{where} {number} has {len(row)} values but the header has {width} columns",
                    )
                row = row[:width]
            record = dict(zip(header, [*row, *([None] * (width - len(row)))], strict=True))
            out.write("\n" if first else ",\n")
            line = json.dumps(record, ensure_ascii=False)
            budget.spend(len(line) - _estimated_size(row, header))
            out.write(line)
            first = False
        out.write("\n]\n" if not first else "]\n")


@register("csv", "json")
def csv_to_json(src: Path, dst: Path, options: Options, progress: Progress) -> Output:
    """An array of objects keyed by the header row; every value a string, missing ones null."""
    progress(1, "reading CSV")
    rows = _csv_rows(src, progress, 2, 98)
    header = _header_keys(next(rows, []))  # an empty CSV gives []
    _write_json_objects(dst, header, rows, "row")
    progress(100, "done")
    return Output("json", "application/json")


@register("csv", "xlsx")
def csv_to_xlsx(src: Path, dst: Path, options: Options, progress: Progress) -> Output:
    """One worksheet, "Sheet1", the rows as they are (numbers written as numbers, see above)."""
    limits = current_limits()
    progress(1, "reading CSV")
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("Sheet1")
    try:
        for count, row in enumerate(_csv_rows(src, progress, 2, 85), start=1):
            if count > limits.max_xlsx_rows:
                raise ConversionError(
                    "too_large", f"the CSV has over {fmt_int(limits.max_xlsx_rows)} rows, the worksheet limit"
                )
            if len(row) > MAX_COLUMNS:
                detail = f"row {count} has {len(row):,} columns; a worksheet holds {MAX_COLUMNS:,}"
                raise ConversionError("too_large", detail)
            sheet.append([_xlsx_cell(sheet, value, count, col) for col, value in enumerate(row, start=1)])
        progress(85, "writing workbook")
    except BaseException:
        _discard(sheet)
        raise
    workbook.save(dst)
    progress(100, "done")
    return Output("xlsx", _XLSX_TYPE)


def _discard(sheet: Any) -> None:
    """Drop an unfinished write-only sheet and its temporary file.

    openpyxl streams write-only rows to a temporary file that only `save()` or process exit
    removes; a long-lived worker must not collect them from failed and cancelled jobs.
    """
    rows, writer = getattr(sheet, "_rows", None), getattr(sheet, "_writer", None)
    with contextlib.suppress(Exception):
        if rows is not None:
            rows.close()
    with contextlib.suppress(Exception):
        if writer is not None:
            writer.close()
    with contextlib.suppress(Exception):
        if writer is not None:
            writer.cleanup()


def _xlsx_cell(sheet: Any, value: str, row: int, column: int) -> Any:
    if _INT_RE.fullmatch(value) and value != "-0":
        return int(value)
    if len(value) <= 17 and _FLOAT_RE.fullmatch(value):
        number = float(value)
        if f"{number:.15g}" == value:
            return number
    if len(value) > MAX_CELL_CHARS:
        detail = f"row {row}, column {column}: {len(value):,} characters; a cell holds {MAX_CELL_CHARS:,}"
        raise ConversionError("too_large", detail)
    value = ILLEGAL_CHARACTERS_RE.sub("", value)  # control characters XML cannot carry
    if value.startswith("="):
        cell = WriteOnlyCell(sheet, value=value)
        cell.data_type = "s"  # text, not a formula: a CSV must not smuggle one in
        return cell
    return value


# --- XLSX in ----------------------------------------------------------------------------------


def check_xlsx_archive(src: Path) -> None:
    """Refuse zip bombs and XML with a DTD before any XML parser sees the workbook."""
    limits = current_limits()
    try:
        with zipfile.ZipFile(src) as archive:
            members = archive.infolist()
            if len(members) > limits.max_xlsx_members:
                detail = f"the workbook has {len(members):,} parts; the limit is {limits.max_xlsx_members:,}"
                raise ConversionError("too_large", detail)
            total = sum(member.file_size for member in members)
            if total > limits.max_xlsx_uncompressed_bytes:
                raise ConversionError(
                    "too_large",
                    f"the workbook expands to {fmt_int(total)} bytes; the limit is "
                    f"{fmt_int(limits.max_xlsx_uncompressed_bytes)}",
                )
            for member in members:
                ratio = member.file_size / max(member.compress_size, 1)
                if member.file_size > _RATIO_CHECK_FROM and ratio > limits.max_xlsx_compression_ratio:
                    raise ConversionError(
                        "too_large", f"{member.filename} expands {ratio:.0f} times, a zip bomb; refused"
                    )
            for member in members:
                if member.filename.endswith((".xml", ".rels", ".vml")):
                    with archive.open(member) as part:
                        head = part.read(_DTD_SCAN_BYTES)
                    if xml_prolog_declares_dtd(head):
                        raise ConversionError(
                            "too_large",
                            f"{member.filename} declares XML entities (a possible XML bomb); refused",
                        )
    except ConversionError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ConversionError("corrupt", f"not a valid xlsx workbook ({exc})") from exc


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_PROLOG_RE = re.compile(rb"\A(?:\xef\xbb\xbf)?(?:\s+|<\?.*?\?>|<!--.*?-->)*", re.DOTALL)


def xml_prolog_declares_dtd(head: bytes) -> bool:
    """True if an XML document (its first bytes) has a DOCTYPE, or a prolog too long to judge.

    A DTD can only come before the root element, so the first few KiB decide. OOXML parts never
    carry one; its presence means entity tricks (billion laughs, external entities).
    """
    if head[:2] in _UTF16_BOMS:
        head = head.decode("utf-16", errors="ignore").encode("utf-8")
    prolog = _PROLOG_RE.match(head)
    rest = head[prolog.end() if prolog else 0 :]
    if not rest:
        return bool(head.strip())  # nothing but prolog in the whole sample: refuse to guess
    return rest.startswith(b"<!")


def _xlsx_rows(src: Path, progress: Progress, start: int, end: int) -> Iterator[list[Any]]:
    """The non-empty rows of the first worksheet, trailing empty cells trimmed."""
    limits = current_limits()
    check_xlsx_archive(src)
    with src.open("rb") as raw:  # a file object: openpyxl would insist on an .xlsx file name
        try:
            workbook = openpyxl.load_workbook(raw, read_only=True, data_only=True, keep_links=False)
        except Exception as exc:  # defusedxml, zipfile, KeyError on missing parts, ValueError…
            raise _xlsx_error(exc) from exc
        try:
            if not workbook.worksheets:
                raise ConversionError("corrupt", "the workbook has no worksheet")
            sheet = workbook.worksheets[0]
            try:
                estimate = sheet.max_row if isinstance(sheet.max_row, int) and sheet.max_row > 0 else None
                # The <dimension> element may claim far more rows than exist; without it openpyxl
                # yields only the rows present instead of padding to the claim.
                sheet.reset_dimensions()
            except Exception as exc:
                raise _xlsx_error(exc) from exc
            count = 0
            rows = sheet.iter_rows(values_only=True)
            while True:
                try:
                    values = next(rows, None)
                except Exception as exc:
                    raise _xlsx_error(exc) from exc
                if values is None:
                    break
                count += 1  # empty rows count too: a sheet may claim row 10,000,000
                if count > limits.max_xlsx_rows:
                    raise ConversionError(
                        "too_large", f"the worksheet has more than {fmt_int(limits.max_xlsx_rows)} rows"
                    )
                if count % ROWS_PER_REPORT == 0:
                    done = count / estimate if estimate else count / (count + 50_000)
                    progress(start + int((end - start) * min(done, 1.0)), f"row {fmt_int(count)}")
                row = list(values)
                while row and row[-1] is None:
                    row.pop()
                if row:
                    yield row
        finally:
            workbook.close()


def _xlsx_error(exc: Exception) -> ConversionError:
    if isinstance(exc, ConversionError):
        return exc
    cause: BaseException | None = exc
    while cause is not None:  # openpyxl wraps parser errors in its own ValueError
        if type(cause).__module__.startswith("defusedxml"):
            return ConversionError("too_large", "the workbook declares XML entities (a possible XML bomb)")
        cause = cause.__cause__ or cause.__context__
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return ConversionError("corrupt", f"not a valid xlsx workbook ({reason})")


def _estimated_size(row: list[Any], keys: list[str] | None = None) -> int:
    """Roughly what a row costs as text: its strings (and keys), 8 bytes for anything else."""
    size = sum(len(value) if isinstance(value, str) else 8 for value in row)
    return size + (sum(len(key) + 4 for key in keys[: len(row)]) if keys else 0)


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return f"{value:.15g}"
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return float(f"{value:.15g}")
    return _csv_text(value)


@register("xlsx", "csv")
def xlsx_to_csv(src: Path, dst: Path, options: Options, progress: Progress) -> Output:
    """The first worksheet as comma-separated UTF-8 (no BOM), rows padded to the header's width."""
    progress(1, "opening workbook")
    rows = _xlsx_rows(src, progress, 5, 99)
    budget = OutputBudget()
    with dst.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        width = 0
        for row in rows:
            width = width or len(row)  # the first row is the header
            budget.spend(_estimated_size(row) + len(row) + 1)
            writer.writerow([_csv_text(value) for value in row] + [""] * (width - len(row)))
    progress(100, "done")
    return Output("csv", "text/csv; charset=utf-8")


@register("xlsx", "json")
def xlsx_to_json(src: Path, dst: Path, options: Options, progress: Progress) -> Output:
    """The first worksheet as an array of objects keyed by its first row."""
    progress(1, "opening workbook")
    rows = _xlsx_rows(src, progress, 5, 99)
    header = _header_keys(next(rows, []))  # an empty sheet gives []
    body = ([_json_value(value) for value in row] for row in rows)
    _write_json_objects(dst, header, body, "row")
    progress(100, "done")
    return Output("json", "application/json")
