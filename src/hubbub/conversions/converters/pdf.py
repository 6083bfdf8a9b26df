"""PDF → png (one page, or every page in a zip) and PDF → txt, with pypdfium2.

Pages render at 144 dpi (scale 2); a page that would exceed `Limits.max_render_pixels` renders at
a lower resolution instead. Documents over `Limits.max_pdf_pages` are refused whatever is asked
of them. Password-protected documents (a user password is needed to open them) are "corrupt".

PDFium is not thread-safe, so one lock serialises every use of it in this process; run PDF
conversions in parallel with processes, not threads.
"""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium

from .base import ConversionError, Options, Output, OutputBudget, Progress, current_limits, fmt_int
from .registry import OptionSpec, register

RENDER_SCALE = 2.0  # 144 dpi: PDF units are 1/72 inch
_PDFIUM_LOCK = threading.Lock()


@contextmanager
def _open(src: Path) -> Iterator[Any]:
    """The open document, its page count checked against the limit."""
    with _PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(str(src))
        except pdfium.PdfiumError as exc:
            message = str(exc)
            if "password" in message.lower():
                raise ConversionError("corrupt", "the PDF is password-protected") from exc
            raise ConversionError("corrupt", f"not a valid PDF ({message})") from exc
        try:
            pages = len(document)
            limit = current_limits().max_pdf_pages
            if pages > limit:
                raise ConversionError(
                    "too_large", f"the PDF has {fmt_int(pages)} pages; the limit is {fmt_int(limit)}"
                )
            if pages == 0:
                raise ConversionError("corrupt", "the PDF has no pages")
            yield document
        finally:
            document.close()


def _render_png(document: Any, index: int) -> bytes:
    try:
        page = document[index]
        try:
            width, height = page.get_size()
            limit = current_limits().max_render_pixels
            scale = RENDER_SCALE
            if width * height * scale * scale > limit:
                scale = (limit / max(width * height, 1.0)) ** 0.5
            bitmap = page.render(scale=scale)
            image = bitmap.to_pil()
        finally:
            page.close()
    except pdfium.PdfiumError as exc:
        raise ConversionError("corrupt", f"page {index + 1} of the PDF cannot be rendered ({exc})") from exc
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


@register("pdf", "png", {"page": OptionSpec(minimum=1, help="render only this page (from 1)")})
def pdf_to_png(src: Path, dst: Path, options: Options, progress: Progress) -> Output:
    """With `page`: that page as a PNG. Without: a zip of page-0001.png, page-0002.png, …"""
    progress(2, "opening PDF")
    with _open(src) as document:
        total = len(document)
        page = options.get("page")
        if page is not None:
            if page > total:
                pages = "1 page" if total == 1 else f"{fmt_int(total)} pages"
                raise ConversionError("bad_option", f"page {page} does not exist; the PDF has {pages}")
            progress(10, f"rendering page {page} of {total}")
            dst.write_bytes(_render_png(document, page - 1))
            progress(100, "done")
            return Output("png", "image/png")
        budget = OutputBudget()
        # PNG is already compressed: store, don't deflate twice.
        with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as archive:
            for index in range(total):
                progress(5 + 95 * index // total, f"page {index + 1} of {total}")
                png = _render_png(document, index)
                budget.spend(len(png))
                archive.writestr(f"page-{index + 1:04d}.png", png)
    progress(100, "done")
    return Output("zip", "application/zip")


@register("pdf", "txt")
def pdf_to_txt(src: Path, dst: Path, options: Options, progress: Progress) -> Output:
    """The text of every page in reading order, pages separated by a form feed on its own line."""
    progress(2, "opening PDF")
    budget = OutputBudget()
    with _open(src) as document, dst.open("w", encoding="utf-8", newline="\n") as out:
        total = len(document)
        for index in range(total):
            progress(5 + 95 * index // total, f"page {index + 1} of {total}")
            if index:
                out.write("\n\f\n")
            try:
                page = document[index]
                try:
                    textpage = page.get_textpage()
                    try:
                        text = textpage.get_text_bounded()
                    finally:
                        textpage.close()
                finally:
                    page.close()
            except pdfium.PdfiumError as exc:
                detail = f"page {index + 1} of the PDF cannot be read ({exc})"
                raise ConversionError("corrupt", detail) from exc
            budget.spend(len(text))
            out.write(text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n"))
        out.write("\n")
    progress(100, "done")
    return Output("txt", "text/plain; charset=utf-8")
