"""The pure converter layer (CONTRACT.md §6): every pair on small files generated here, decoded back.

No database, no network: each test writes its inputs under tmp_path and checks what came out.
"""

from __future__ import annotations

import csv
import io
import json
import re
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pypdfium2 as pdfium
import pytest
from PIL import Image

from hubbub.conversions import converters
from hubbub.conversions.converters import Cancelled, ConversionError, Limits, Output
from hubbub.conversions.converters import tables as tables_module
from hubbub.conversions.converters.base import MonotonicProgress
from hubbub.conversions.converters.tables import xml_prolog_declares_dtd

IMAGE_FORMATS = ["png", "jpeg", "webp", "gif", "bmp", "tiff"]
PIL_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}


# --- helpers --------------------------------------------------------------------------------------


class Recorder:
    """A progress callback that remembers every call and can cancel at the n-th."""

    def __init__(self, cancel_at: int | None = None) -> None:
        self.calls: list[tuple[int, str]] = []
        self.cancel_at = cancel_at

    def __call__(self, percent: int, stage: str) -> None:
        self.calls.append((percent, stage))
        if self.cancel_at is not None and len(self.calls) >= self.cancel_at:
            raise Cancelled()

    @property
    def percents(self) -> list[int]:
        return [percent for percent, _ in self.calls]

    def assert_complete(self, *, intermediate: int = 1) -> None:
        values = self.percents
        assert values == sorted(values), f"progress went down: {values}"
        assert all(0 <= value <= 100 for value in values)
        assert values[-1] == 100
        assert len({value for value in values if 0 < value < 100}) >= intermediate, values


def run(
    source: str,
    target: str,
    src: Path,
    options: dict[str, Any] | None = None,
    *,
    limits: Limits | None = None,
    progress: Recorder | None = None,
) -> tuple[Path, Output, Recorder]:
    dst = src.with_name(f"{src.name}.out")
    recorder = progress or Recorder()
    output = converters.convert(source, target, src, dst, options or {}, recorder, limits=limits)
    assert dst.exists()
    return dst, output, recorder


def fails(
    code: str,
    source: str,
    target: str,
    src: Path,
    options: dict[str, Any] | None = None,
    *,
    limits: Limits | None = None,
) -> ConversionError:
    dst = src.with_name(f"{src.name}.out")
    with pytest.raises(ConversionError) as info:
        converters.convert(source, target, src, dst, options or {}, Recorder(), limits=limits)
    assert info.value.code == code, info.value.detail
    assert info.value.detail and "\n" not in info.value.detail
    assert not dst.exists(), "a failed conversion must not leave its output behind"
    return info.value


def sample_image(mode: str = "RGBA", size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Left half red, right half blue, bottom-right quarter transparent (when there is alpha)."""
    image = Image.new("RGBA", size, (255, 0, 0, 255))
    width, height = size
    image.paste((0, 0, 255, 255), (width // 2, 0, width, height))
    image.paste((0, 0, 0, 0), (width // 2, height // 2, width, height))
    return image.convert(mode) if mode != "RGBA" else image


def write_image(path: Path, fmt: str, image: Image.Image | None = None) -> Path:
    image = image or sample_image()
    if fmt in ("jpeg", "bmp"):
        image = image.convert("RGB")
    image.save(path, PIL_NAMES[fmt])
    return path


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header claiming width x height, with (almost) no pixel data behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def image_pdf(path: Path, colours: list[tuple[int, int, int]]) -> Path:
    """A PDF with one page per colour, each page a filled 200x100 image, via Pillow."""
    pages = [Image.new("RGB", (200, 100), colour) for colour in colours]
    pages[0].save(path, "PDF", save_all=True, append_images=pages[1:], resolution=72)
    return path


def text_pdf(pages: list[str], *, encrypt: bool = False) -> bytes:
    """A minimal valid PDF, written by hand, with one Helvetica text line per page."""
    objects: list[bytes] = []
    count = len(pages)
    kids = " ".join(f"{4 + 2 * index} 0 R" for index in range(count))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for index, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 18 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * index} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    extra = b""
    if encrypt:
        # The standard security handler, revision 2, with an /O and /U that no empty user
        # password matches: readers must ask for a password.
        objects.append(b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -4 >>" % (b"ab" * 32, b"cd" * 32))
        extra = b"/Encrypt %d 0 R /ID [<%s><%s>] " % (len(objects), b"01" * 16, b"01" * 16)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    trailer = b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n"
    out += trailer % (len(objects) + 1, extra, xref)
    return bytes(out)


def write_csv(path: Path, rows: list[list[str]], *, delimiter: str = ",", bom: bool = False) -> Path:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerows(rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode("utf-8"))
    return path


def write_xlsx(path: Path, rows: list[list[Any]], *, second_sheet: list[list[Any]] | None = None) -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "Data"
    for row in rows:
        sheet.append(row)
    if second_sheet is not None:
        other = workbook.create_sheet("Other")
        for row in second_sheet:
            other.append(row)
    workbook.save(path)
    return path


def replace_members(path: Path, replacements: dict[str, bytes]) -> Path:
    """Rewrite the zip at path with some members' content replaced."""
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in members:
            archive.writestr(info.filename, replacements.get(info.filename, data))
    return path


BILLION_LAUGHS = b"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>
<row r="1"><c r="A1" t="inlineStr"><is><t>&lol9;</t></is></c></row>
</sheetData></worksheet>
"""


# --- the registry ---------------------------------------------------------------------------------


def test_supported_lists_exactly_the_contract_table() -> None:
    images = sorted([*IMAGE_FORMATS, "pdf"])
    expected = {fmt: images for fmt in IMAGE_FORMATS}
    expected.update({"pdf": ["png", "txt"], "csv": ["json", "xlsx"], "xlsx": ["csv", "json"], "md": ["html"]})
    assert converters.supported() == dict(sorted(expected.items()))


def test_unsupported_pair_names_what_is_supported() -> None:
    with pytest.raises(ConversionError) as info:
        converters.lookup("pdf", "jpeg")
    assert info.value.code == "unsupported_conversion"
    assert info.value.detail == "pdf → jpeg is not supported; from pdf: png, txt"


def test_unknown_source_is_unsupported() -> None:
    with pytest.raises(ConversionError) as info:
        converters.lookup("docx", "pdf")
    assert info.value.code == "unsupported_conversion"
    assert "supported sources: bmp, csv" in info.value.detail


def test_convert_refuses_an_unsupported_pair_before_touching_files(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "a", [["a"], ["1"]])
    fails("unsupported_conversion", "csv", "html", src)


def test_format_aliases_are_accepted() -> None:
    assert converters.lookup("JPG", ".tif").label == "jpeg → tiff"
    assert converters.lookup("markdown", "htm").label == "md → html"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, {"quality": 85}),
        ({"quality": 40, "max_width": 100}, {"quality": 40, "max_width": 100}),
        ({"quality": "70"}, {"quality": 70}),  # multipart form fields are text
        ({"max_height": None}, {"quality": 85}),
    ],
)
def test_validate_options_accepts_and_fills_defaults(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    assert converters.validate_options(converters.lookup("png", "jpeg"), raw) == expected


@pytest.mark.parametrize(
    ("source", "target", "raw", "fragment"),
    [
        ("png", "jpeg", {"quality": 0}, "quality must be at least 1"),
        ("png", "jpeg", {"quality": 101}, "quality must be at most 100"),
        ("png", "jpeg", {"quality": True}, "whole number"),
        ("png", "jpeg", {"quality": 2.5}, "whole number"),
        ("png", "jpeg", {"max_width": "wide"}, "whole number"),
        ("png", "jpeg", {"max_width": 0}, "at least 1"),
        ("png", "jpeg", {"colour": 3}, "unknown option colour for png → jpeg; allowed: max_height"),
        ("png", "png", {"quality": 80}, "allowed: max_height, max_width"),
        ("pdf", "png", {"page": 0}, "page must be at least 1"),
        ("csv", "json", {"page": 1}, "it takes no options"),
    ],
)
def test_bad_options_are_refused(source: str, target: str, raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConversionError) as info:
        converters.validate_options(converters.lookup(source, target), raw)
    assert info.value.code == "bad_option"
    assert fragment in info.value.detail


def test_options_are_validated_again_by_convert(tmp_path: Path) -> None:
    src = write_image(tmp_path / "a", "png")
    fails("bad_option", "png", "jpeg", src, {"quality": 500})


def test_error_codes_are_checked() -> None:
    with pytest.raises(ValueError):
        ConversionError("oops", "x")  # type: ignore[arg-type]


# --- sniffing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_sniff_images_by_magic_not_name(tmp_path: Path, fmt: str) -> None:
    path = write_image(tmp_path / "upload", fmt)
    assert converters.sniff(path, "report.csv") == fmt
    assert converters.sniff(path, None) == fmt


def test_sniff_pdf_xlsx_and_text(tmp_path: Path) -> None:
    pdf = tmp_path / "a"
    pdf.write_bytes(text_pdf(["hi"]))
    assert converters.sniff(pdf, "notes.md") == "pdf"
    xlsx = write_xlsx(tmp_path / "b", [["a", "b"], [1, 2]])
    assert converters.sniff(xlsx, "photo.png") == "xlsx"
    table = write_csv(tmp_path / "c", [["name", "age"], ["ann", "3"], ["bob", "4"]])
    assert converters.sniff(table, None) == "csv"
    assert converters.sniff(table, "table.md") == "md"  # the name breaks ties between text formats
    prose = tmp_path / "d"
    prose.write_text("# Title\n\nSome *prose*, with commas, here.\n\nMore text.\n")
    assert converters.sniff(prose, None) == "md"
    assert converters.sniff(prose, "x.CSV") == "csv"
    assert converters.sniff(prose, r"C:\Users\me\notes.markdown") == "md"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a;b;c\n1;2;3\n4;5;6\n", "csv"),
        ("a\tb\n1\t2\n", "csv"),
        ('name,comment\nann,"hello, world"\nbob,"two\nlines"\n', "csv"),
        ("BMW,Audi\nVW,Opel\n", "csv"),  # starts with "BM" but is no bitmap
        ("- one, two\n- three, four\n", "md"),  # a list, not a table
        ("Hello, world.\nThis is, a longer, line.\n", "md"),
        ("just one line\n", "md"),
    ],
)
def test_sniff_text_heuristic(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "upload"
    path.write_text(text)
    assert converters.sniff(path, "upload.bin") == expected


def test_sniff_unknown_content(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"\x00\x01\x02binary\xff")
    assert converters.sniff(path, "x.csv") is None  # binary is never text, whatever the name
    path.write_bytes("caf\xe9".encode("latin-1") * 10)
    assert converters.sniff(path, "x.csv") is None  # not UTF-8
    path.write_bytes(b"")
    assert converters.sniff(path, None) is None
    assert converters.sniff(path, "empty.md") == "md"
    plain_zip = tmp_path / "z"
    with zipfile.ZipFile(plain_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert converters.sniff(plain_zip, "book.xlsx") is None


def test_sniff_calls_a_truncated_workbook_xlsx(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "a", [["a"], [1]])
    path.write_bytes(path.read_bytes()[:600])
    assert converters.sniff(path, None) == "xlsx"
    fails("corrupt", "xlsx", "csv", path)


def test_sniff_samples_only_the_start_of_a_long_text(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_text("id,name\n" + "".join(f"{n},é{n}\n" for n in range(20_000)))
    assert path.stat().st_size > 64 * 1024
    assert converters.sniff(path, None) == "csv"


# --- images ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", IMAGE_FORMATS)
@pytest.mark.parametrize("target", IMAGE_FORMATS)
def test_every_image_pair(tmp_path: Path, source: str, target: str) -> None:
    src = write_image(tmp_path / "in", source)
    dst, output, progress = run(source, target, src)
    progress.assert_complete(intermediate=3)
    assert output.content_type == f"image/{target}"
    with Image.open(dst) as result:
        assert result.format == PIL_NAMES[target]
        assert result.size == (64, 48)
        rgba = result.convert("RGBA")
        red = rgba.getpixel((5, 5))
        assert isinstance(red, tuple) and red[0] > 200 and red[2] < 60, red
        blue = rgba.getpixel((40, 5))
        assert isinstance(blue, tuple) and blue[2] > 200 and blue[0] < 60, blue


@pytest.mark.parametrize("source", IMAGE_FORMATS)
def test_every_image_to_pdf(tmp_path: Path, source: str) -> None:
    src = write_image(tmp_path / "in", source)
    dst, output, progress = run(source, "pdf", src, {"quality": 90})
    progress.assert_complete(intermediate=3)
    assert output == Output("pdf", "application/pdf")
    document = pdfium.PdfDocument(str(dst))
    try:
        assert len(document) == 1
        width, height = document[0].get_size()
        assert round(width / height, 2) == round(64 / 48, 2)
    finally:
        document.close()


def test_extensions_are_the_usual_ones(tmp_path: Path) -> None:
    src = write_image(tmp_path / "in", "png")
    assert run("png", "jpeg", src)[1] == Output("jpg", "image/jpeg")
    assert run("png", "tiff", src)[1] == Output("tif", "image/tiff")


@pytest.mark.parametrize(
    ("options", "size"),
    [
        ({"max_width": 32}, (32, 24)),
        ({"max_height": 12}, (16, 12)),
        ({"max_width": 32, "max_height": 6}, (8, 6)),
        ({"max_width": 1000, "max_height": 1000}, (64, 48)),  # never enlarged
        ({"max_width": 1}, (1, 1)),
    ],
)
def test_resize_keeps_aspect_and_never_upscales(
    tmp_path: Path, options: dict[str, int], size: tuple[int, int]
) -> None:
    src = write_image(tmp_path / "in", "png")
    dst, _, _ = run("png", "webp", src, options)
    with Image.open(dst) as result:
        assert result.size == size


def test_resizing_a_palette_image_resamples_in_colour(tmp_path: Path) -> None:
    src = write_image(tmp_path / "in", "gif")
    dst, _, _ = run("gif", "png", src, {"max_width": 32})
    with Image.open(dst) as result:
        assert result.size == (32, 24)
        assert result.mode in ("RGB", "RGBA")


def test_transparency_becomes_white_in_jpeg_and_stays_in_png(tmp_path: Path) -> None:
    src = write_image(tmp_path / "in", "png")
    jpeg, _, _ = run("png", "jpeg", src)
    with Image.open(jpeg) as result:
        assert result.mode == "RGB"
        corner = result.getpixel((60, 44))
        assert isinstance(corner, tuple) and min(corner) > 240, corner
    png, _, _ = run("png", "png", src)
    with Image.open(png) as result:
        assert result.mode == "RGBA"
        corner = result.getpixel((60, 44))
        assert isinstance(corner, tuple) and corner[3] == 0


def test_palette_transparency_is_kept_in_png_and_flattened_in_bmp(tmp_path: Path) -> None:
    src = tmp_path / "in"
    sample_image().save(src, "GIF")  # Pillow stores the transparent quarter as a palette entry
    png, _, _ = run("gif", "png", src)
    with Image.open(png) as result:
        assert result.mode == "P"
        corner = result.convert("RGBA").getpixel((60, 44))
        assert isinstance(corner, tuple) and corner[3] == 0
    bmp, _, _ = run("gif", "bmp", src)
    with Image.open(bmp) as result:
        assert result.mode == "RGB"
        assert result.getpixel((60, 44)) == (255, 255, 255)


def test_animated_gif_converts_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 10), colour) for colour in [(0, 255, 0), (255, 0, 0), (0, 0, 255)]]
    src = tmp_path / "in"
    frames[0].save(src, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    dst, _, _ = run("gif", "png", src)
    with Image.open(dst) as result:
        assert getattr(result, "n_frames", 1) == 1
        assert result.convert("RGB").getpixel((5, 5)) == (0, 255, 0)


def test_quality_changes_jpeg_size(tmp_path: Path) -> None:
    noisy = Image.effect_noise((256, 256), 80).convert("RGB")
    src = write_image(tmp_path / "in", "png", noisy)
    low, _, _ = run("png", "jpeg", src, {"quality": 10})
    high = tmp_path / "high"
    converters.convert("png", "jpeg", src, high, {"quality": 95}, Recorder())
    assert low.stat().st_size * 2 < high.stat().st_size


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    src = tmp_path / "in"
    Image.new("I;16", (8, 8), 32768).save(src, "PNG")
    dst, _, _ = run("png", "jpeg", src)
    with Image.open(dst) as result:
        value = result.convert("L").getpixel((4, 4))
        assert isinstance(value, int) and 120 <= value <= 136, value


def test_cmyk_jpeg_to_png_is_rgb(tmp_path: Path) -> None:
    src = tmp_path / "in"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(src, "JPEG")
    dst, _, _ = run("jpeg", "png", src)
    with Image.open(dst) as result:
        assert result.mode == "RGB"


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    src = tmp_path / "in"
    image.save(src, "JPEG", exif=exif.tobytes())
    dst, _, _ = run("jpeg", "png", src)
    with Image.open(dst) as result:
        assert result.size == (20, 40)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF reader warns about broken tags
@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_corrupt_images(tmp_path: Path, fmt: str) -> None:
    src = write_image(tmp_path / "in", fmt, sample_image(size=(300, 200)))
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])  # truncated
    error = fails("corrupt", fmt, "png", src)
    assert f"not a valid {fmt.upper()} image" in error.detail
    src.write_bytes(data[:16] + b"\x00garbage" * 50)  # a mangled header may claim any size
    with pytest.raises(ConversionError) as info:
        converters.convert(fmt, "png", src, tmp_path / "out", {}, Recorder())
    assert info.value.code in ("corrupt", "too_large")


def test_content_not_matching_the_stated_format_is_corrupt(tmp_path: Path) -> None:
    src = write_image(tmp_path / "in", "png")
    fails("corrupt", "jpeg", "png", src)  # decoded strictly with the JPEG decoder


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    src = tmp_path / "bomb"
    src.write_bytes(png_claiming(100_000, 100_000))
    assert converters.sniff(src, "bomb.png") == "png"
    error = fails("too_large", "png", "jpeg", src)
    assert "too large" in error.detail


def test_image_just_over_the_limit_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(png_claiming(8_000, 8_000))  # 64 M pixels: Pillow only warns here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        error = fails("too_large", "png", "jpeg", src)
    assert error.detail == "the image is 8000x8000 = 64,000,000 pixels; the limit is 50,000,000"
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # as under python -W error
        fails("too_large", "png", "jpeg", src)


def test_image_limit_can_be_lowered(tmp_path: Path) -> None:
    src = write_image(tmp_path / "in", "png")
    fails("too_large", "png", "jpeg", src, limits=Limits(max_image_pixels=1000))


def test_cancelling_an_image_conversion(tmp_path: Path) -> None:
    src = write_image(tmp_path / "in", "png")
    dst = tmp_path / "out"
    with pytest.raises(Cancelled):
        converters.convert("png", "jpeg", src, dst, {}, Recorder(cancel_at=3))
    assert not dst.exists()


# --- PDF ------------------------------------------------------------------------------------------

COLOURS = [(255, 0, 0), (0, 160, 0), (0, 0, 255)]


def test_pdf_to_png_zip_of_every_page(tmp_path: Path) -> None:
    src = image_pdf(tmp_path / "in", COLOURS)
    dst, output, progress = run("pdf", "png", src)
    assert output == Output("zip", "application/zip")
    progress.assert_complete(intermediate=3)
    assert ("page 2 of 3") in [stage for _, stage in progress.calls]
    with zipfile.ZipFile(dst) as archive:
        assert archive.namelist() == ["page-0001.png", "page-0002.png", "page-0003.png"]
        for name, colour in zip(archive.namelist(), COLOURS, strict=True):
            with Image.open(io.BytesIO(archive.read(name))) as page:
                assert page.format == "PNG"
                assert page.size == (400, 200)  # 144 dpi
                pixel = page.convert("RGB").getpixel((200, 100))
                assert isinstance(pixel, tuple)
                assert all(abs(a - b) < 20 for a, b in zip(pixel, colour, strict=True)), (name, pixel)


def test_pdf_to_png_one_page(tmp_path: Path) -> None:
    src = image_pdf(tmp_path / "in", COLOURS)
    dst, output, progress = run("pdf", "png", src, {"page": 2})
    assert output == Output("png", "image/png")
    progress.assert_complete()
    with Image.open(dst) as page:
        pixel = page.convert("RGB").getpixel((10, 10))
        assert isinstance(pixel, tuple) and pixel[1] > 140 and pixel[0] < 20


def test_pdf_page_past_the_end_is_a_bad_option(tmp_path: Path) -> None:
    src = image_pdf(tmp_path / "in", COLOURS)
    error = fails("bad_option", "pdf", "png", src, {"page": 7})
    assert error.detail == "page 7 does not exist; the PDF has 3 pages"


def test_pdf_to_txt_keeps_page_order(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(text_pdf(["Hello page one", "Second (page) <b>two</b>", "Third"]))
    dst, output, progress = run("pdf", "txt", src)
    assert output == Output("txt", "text/plain; charset=utf-8")
    progress.assert_complete(intermediate=3)
    pages = dst.read_text(encoding="utf-8").split("\f")
    assert [page.strip() for page in pages] == ["Hello page one", "Second (page) <b>two</b>", "Third"]


def test_pdf_over_the_page_cap_is_too_large(tmp_path: Path) -> None:
    src = image_pdf(tmp_path / "in", COLOURS)
    error = fails("too_large", "pdf", "png", src, limits=Limits(max_pdf_pages=2))
    assert error.detail == "the PDF has 3 pages; the limit is 2"
    fails("too_large", "pdf", "txt", src, limits=Limits(max_pdf_pages=2))


def test_huge_pages_render_at_a_lower_resolution(tmp_path: Path) -> None:
    src = image_pdf(tmp_path / "in", COLOURS[:1])
    dst, _, _ = run("pdf", "png", src, {"page": 1}, limits=Limits(max_render_pixels=5000))
    with Image.open(dst) as page:
        assert page.width * page.height <= 5000
        assert page.width == pytest.approx(2 * page.height, abs=2)


@pytest.mark.parametrize(
    "content",
    [
        b"%PDF-1.4\nthis is not a pdf at all\n",
        text_pdf(["hello"])[:60],
        b"%PDF-",
    ],
)
@pytest.mark.parametrize("target", ["png", "txt"])
def test_corrupt_pdf(tmp_path: Path, content: bytes, target: str) -> None:
    src = tmp_path / "in"
    src.write_bytes(content)
    assert converters.sniff(src, None) == "pdf"
    fails("corrupt", "pdf", target, src)


def test_encrypted_pdf_is_corrupt(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(text_pdf(["secret"], encrypt=True))
    error = fails("corrupt", "pdf", "txt", src)
    assert error.detail == "the PDF is password-protected"


def test_cancelling_between_pages(tmp_path: Path) -> None:
    src = image_pdf(tmp_path / "in", COLOURS)
    dst = tmp_path / "out"
    progress = Recorder(cancel_at=4)
    with pytest.raises(Cancelled):
        converters.convert("pdf", "png", src, dst, {}, progress)
    assert progress.calls[-1][1] == "page 2 of 3"
    assert not dst.exists()


# --- tables ---------------------------------------------------------------------------------------


def test_csv_to_json(tmp_path: Path) -> None:
    rows = [["name", "note", "n"], ["Zoë", "hello, world", "1"], ["bob", "two\nlines"], ["", "", ""]]
    src = write_csv(tmp_path / "in", rows, bom=True)
    dst, output, progress = run("csv", "json", src)
    assert output == Output("json", "application/json")
    progress.assert_complete(intermediate=0)
    assert json.loads(dst.read_text(encoding="utf-8")) == [
        {"name": "Zoë", "note": "hello, world", "n": "1"},
        {"name": "bob", "note": "two\nlines", "n": None},  # a short row: the rest is null
    ]


def test_csv_to_json_semicolons_and_header_names(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in", [["a", "", "a"], ["1", "2", "3"]], delimiter=";")
    dst, _, _ = run("csv", "json", src)
    assert json.loads(dst.read_text()) == [{"a": "1", "column_2": "2", "a_2": "3"}]


def test_csv_extra_values_are_refused_for_json_but_trailing_empties_ignored(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_text("a,b\n1,2,\n3,4,,\n")
    dst, _, _ = run("csv", "json", src)
    assert json.loads(dst.read_text()) == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]
    src.write_text("a,b\n1,2\n3,4,5\n")
    error = fails("corrupt", "csv", "json", src)
    assert error.detail == "row 3 has 3 values but the header has 2 columns"


def test_csv_to_xlsx_types_and_round_trip(tmp_path: Path) -> None:
    rows = [
        ["id", "code", "price", "formula", "text", "big"],
        ["1", "007", "1.5", "=1+1", "plain", "12345678901234567890"],
        ["-2", "1.50", "-0.25", "@x", "tab\there", "1e3"],
    ]
    src = write_csv(tmp_path / "in", rows, delimiter="\t")
    dst, output, progress = run("csv", "xlsx", src)
    assert output.extension == "xlsx"
    progress.assert_complete(intermediate=1)
    with dst.open("rb") as f:
        workbook = openpyxl.load_workbook(f)
    sheet = workbook.worksheets[0]
    values = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert values[1] == [1, "007", 1.5, "=1+1", "plain", "12345678901234567890"]
    assert values[2] == [-2, "1.50", -0.25, "@x", "tab\there", "1e3"]
    assert sheet["D2"].data_type == "s"  # text, not a formula
    back, _, _ = run("xlsx", "csv", dst)
    assert list(csv.reader(io.StringIO(back.read_bytes().decode(), newline=""))) == rows


def test_empty_csv_gives_an_empty_result(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_text("\n\n")
    dst, _, _ = run("csv", "json", src)
    assert json.loads(dst.read_text()) == []


def test_xlsx_to_json_first_sheet_typed(tmp_path: Path) -> None:
    import datetime as dt

    rows: list[list[Any]] = [
        ["name", "count", "ratio", "when", "ok", "name", None],
        ["ann", 3, 0.1 + 0.2, dt.datetime(2024, 5, 1), True, "x", None],
        [None, None, None, None, None, None, None],  # empty rows are dropped
        ["bob", None, 2.5, dt.datetime(2024, 5, 1, 13, 30), False],
    ]
    src = write_xlsx(tmp_path / "in", rows, second_sheet=[["ignored"]])
    dst, output, progress = run("xlsx", "json", src)
    assert output == Output("json", "application/json")
    progress.assert_complete(intermediate=0)
    assert json.loads(dst.read_text()) == [
        {"name": "ann", "count": 3, "ratio": 0.3, "when": "2024-05-01", "ok": True, "name_2": "x"},
        {"name": "bob", "count": None, "ratio": 2.5, "when": "2024-05-01T13:30:00", "ok": False,
         "name_2": None},
    ]


def test_xlsx_to_csv(tmp_path: Path) -> None:
    rows: list[list[Any]] = [["a", "b", "c"], [1, "x, y", None], ["long", None], [True, 1.25, "=text"]]
    src = write_xlsx(tmp_path / "in", rows)
    dst, output, _ = run("xlsx", "csv", src)
    assert output == Output("csv", "text/csv; charset=utf-8")
    assert dst.read_bytes() == b'a,b,c\r\n1,"x, y",\r\nlong,,\r\nTRUE,1.25,\r\n'


def test_xlsx_extra_values_without_header_are_refused_for_json(tmp_path: Path) -> None:
    src = write_xlsx(tmp_path / "in", [["a"], [1, 2]])
    error = fails("corrupt", "xlsx", "json", src)
    assert "header has 1 columns" in error.detail


def test_table_progress_reports_rows(tmp_path: Path) -> None:
    rows = [["id", "name", "value"]] + [[str(n), f"name {n}", str(n * 1.5)] for n in range(20_000)]
    src = write_csv(tmp_path / "in", rows)
    xlsx, _, progress = run("csv", "xlsx", src)
    progress.assert_complete(intermediate=5)
    assert any(stage.startswith("row 10,000") for _, stage in progress.calls)
    _, _, progress = run("xlsx", "json", xlsx)
    progress.assert_complete(intermediate=5)
    _, _, progress = run("csv", "json", src)
    progress.assert_complete(intermediate=5)


def openpyxl_temp_files() -> set[str]:
    return {path.name for path in Path(tempfile.gettempdir()).glob("openpyxl.*")}


def test_cancelling_a_table_conversion_leaves_no_temporary_file(tmp_path: Path) -> None:
    rows = [["id"]] + [[str(n)] for n in range(10_000)]
    src = write_csv(tmp_path / "in", rows)
    dst = tmp_path / "out"
    before = openpyxl_temp_files()
    with pytest.raises(Cancelled):
        converters.convert("csv", "xlsx", src, dst, {}, Recorder(cancel_at=3))
    assert not dst.exists()
    fails("too_large", "csv", "xlsx", src, limits=Limits(max_xlsx_rows=100))
    run("csv", "xlsx", src)
    assert openpyxl_temp_files() <= before


def test_csv_not_utf8_is_corrupt(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes("name\ncafé\n".encode("latin-1"))
    error = fails("corrupt", "csv", "json", src)
    assert "not UTF-8" in error.detail


def test_csv_limits(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in", [["n"]] + [[str(n)] for n in range(10)])
    fails("too_large", "csv", "json", src, limits=Limits(max_csv_bytes=10))
    error = fails("too_large", "csv", "xlsx", src, limits=Limits(max_xlsx_rows=5))
    assert "over 5 rows" in error.detail


def test_xlsx_row_cap(tmp_path: Path) -> None:
    src = write_xlsx(tmp_path / "in", [[n] for n in range(10)])
    fails("too_large", "xlsx", "csv", src, limits=Limits(max_xlsx_rows=5))


def test_xlsx_claiming_a_huge_dimension_is_not_padded(tmp_path: Path) -> None:
    src = write_xlsx(tmp_path / "in", [["a"], [1]])
    with zipfile.ZipFile(src) as archive:
        sheet = archive.read("xl/worksheets/sheet1.xml")
    sheet = re.sub(rb'<dimension ref="[^"]*"', b'<dimension ref="A1:XFD1048576"', sheet)
    assert b"XFD1048576" in sheet
    replace_members(src, {"xl/worksheets/sheet1.xml": sheet})
    dst, _, _ = run("xlsx", "csv", src)
    assert dst.read_bytes() == b"a\r\n1\r\n"


@pytest.mark.parametrize(
    "content",
    [b"PK\x03\x04" + b"\x00" * 100, b"not a zip at all", b""],
)
def test_corrupt_xlsx(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "in"
    src.write_bytes(content)
    fails("corrupt", "xlsx", "csv", src)


def test_xlsx_with_broken_parts_is_corrupt(tmp_path: Path) -> None:
    src = write_xlsx(tmp_path / "in", [["a"], [1]])
    replace_members(src, {"xl/workbook.xml": b"<workbook><unclosed>"})
    fails("corrupt", "xlsx", "json", src)
    plain = tmp_path / "plain"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("xl/workbook.xml", "<x/>")
    fails("corrupt", "xlsx", "json", plain)


def test_xlsx_zip_bomb_by_ratio(tmp_path: Path) -> None:
    src = write_xlsx(tmp_path / "in", [["a"], [1]])
    with zipfile.ZipFile(src, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/media/padding.bin", b"\x00" * (8 * 1024 * 1024))  # ~1000x
    error = fails("too_large", "xlsx", "csv", src)
    assert "zip bomb" in error.detail


def test_xlsx_over_the_uncompressed_size_is_refused(tmp_path: Path) -> None:
    src = write_xlsx(tmp_path / "in", [["a"], [1]])
    error = fails("too_large", "xlsx", "csv", src, limits=Limits(max_xlsx_uncompressed_bytes=1000))
    assert "the limit is 1,000" in error.detail


def test_xlsx_member_claiming_a_huge_size_is_refused_unopened(tmp_path: Path) -> None:
    src = write_xlsx(tmp_path / "in", [["a"], [1]])
    data = bytearray(src.read_bytes())
    # Patch the central directory's uncompressed size of the sheet to 3 GB.
    name = b"xl/worksheets/sheet1.xml"
    at = data.rfind(b"PK\x01\x02", 0, data.rfind(name))
    struct.pack_into("<I", data, at + 24, 3_000_000_000)
    src.write_bytes(bytes(data))
    error = fails("too_large", "xlsx", "json", src)
    assert "expands to" in error.detail


def test_xlsx_member_lying_small_is_not_expanded(tmp_path: Path) -> None:
    src = write_xlsx(tmp_path / "in", [["a"]] + [[f"row {n}"] for n in range(2000)])
    data = bytearray(src.read_bytes())
    name = b"xl/worksheets/sheet1.xml"
    at = data.rfind(b"PK\x01\x02", 0, data.rfind(name))
    struct.pack_into("<I", data, at + 24, 5000)  # claims 5 kB, holds far more
    src.write_bytes(bytes(data))
    fails("corrupt", "xlsx", "json", src)  # zipfile stops at the claim and the CRC check fails


@pytest.mark.parametrize("member", ["xl/worksheets/sheet1.xml", "xl/workbook.xml", "[Content_Types].xml"])
def test_xlsx_xml_bomb_is_refused(tmp_path: Path, member: str) -> None:
    src = write_xlsx(tmp_path / "in", [["a"], [1]])
    replace_members(src, {member: BILLION_LAUGHS})
    error = fails("too_large", "xlsx", "json", src)
    assert "XML bomb" in error.detail


def test_xlsx_xml_bomb_is_refused_by_defusedxml_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the prolog scan, openpyxl's defusedxml parser still refuses the entities."""
    monkeypatch.setattr(tables_module, "xml_prolog_declares_dtd", lambda head: False)
    src = write_xlsx(tmp_path / "in", [["a"], [1]])
    replace_members(src, {"xl/worksheets/sheet1.xml": BILLION_LAUGHS})
    error = fails("too_large", "xlsx", "csv", src)
    assert error.detail == "the workbook declares XML entities (a possible XML bomb)"


@pytest.mark.parametrize(
    ("head", "declares"),
    [
        (b'<?xml version="1.0"?>\n<worksheet/>', False),
        (b"\xef\xbb\xbf<?xml version='1.0'?><!-- c --><root/>", False),
        (b'<?xml version="1.0"?>\n<!-- x -->\n<!DOCTYPE a [<!ENTITY b "c">]><a/>', True),
        ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a><a/>'.encode("utf-16"), True),
        (b"<?xml version='1.0'?><!-- a comment longer than the sample", True),
        (b"", False),
    ],
)
def test_xml_prolog_scan(head: bytes, declares: bool) -> None:
    assert xml_prolog_declares_dtd(head) is declares


# --- markdown -------------------------------------------------------------------------------------


def test_markdown_to_html(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_text(
        "Intro before the title.\n\n# The *real* `title` <b>\n\n"
        "<script>alert('x')</script>\n\n[click](javascript:alert(1))\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n## Second\n",
        encoding="utf-8",
    )
    dst, output, progress = run("md", "html", src)
    assert output == Output("html", "text/html; charset=utf-8")
    progress.assert_complete(intermediate=2)
    page = dst.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">")
    assert "<title>The real title &lt;b&gt;</title>" in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(" in page
    assert 'href="javascript' not in page
    assert "<td>1</td>" in page
    assert "<h2>Second</h2>" in page
    assert page.rstrip().endswith("</body>\n</html>")


def test_markdown_without_heading_is_titled_document(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"\xef\xbb\xbfjust text\n")
    dst, _, _ = run("md", "html", src)
    page = dst.read_text()
    assert "<title>Document</title>" in page
    assert "<p>just text</p>" in page


def test_long_markdown_reports_progress_as_it_renders(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_text("".join(f"Paragraph {n} with *emphasis*.\n\n" for n in range(3000)))
    dst, _, progress = run("md", "html", src)
    progress.assert_complete(intermediate=6)
    assert dst.read_text().count("<p>") == 3000


def test_markdown_bad_inputs(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"caf\xe9\n")
    fails("corrupt", "md", "html", src)
    src.write_text("# hi\n" * 100)
    fails("too_large", "md", "html", src, limits=Limits(max_markdown_bytes=100))


# --- progress and failure plumbing ----------------------------------------------------------------


def test_monotonic_progress_never_goes_down() -> None:
    seen = Recorder()
    report = MonotonicProgress(seen)
    for value in [10, 5, 50, 200, 99, -3]:
        report(value, "x")
    assert seen.percents == [10, 10, 50, 100, 100, 100]


Case = tuple[str, str, Callable[[Path], Path]]
CANCEL_CASES: list[Case] = [
    ("png", "webp", lambda path: write_image(path, "png")),
    ("pdf", "txt", lambda path: (path.write_bytes(text_pdf(["a", "b", "c"])), path)[1]),
    ("xlsx", "csv", lambda path: write_xlsx(path, [[n] for n in range(5000)])),
    ("csv", "json", lambda path: write_csv(path, [["n"]] + [[str(n)] for n in range(5000)])),
    ("md", "html", lambda path: (path.write_text("para\n\n" * 2000), path)[1]),
]


@pytest.mark.parametrize(("source", "target", "make"), CANCEL_CASES)
def test_cancel_from_the_callback_stops_every_family(
    tmp_path: Path, source: str, target: str, make: Callable[[Path], Path]
) -> None:
    src = make(tmp_path / "in")
    dst = tmp_path / "out"
    progress = Recorder(cancel_at=3)
    with pytest.raises(Cancelled):
        converters.convert(source, target, src, dst, {}, progress)
    assert len(progress.calls) == 3  # it stopped at once
    assert not dst.exists()


def test_a_cancelled_subclass_propagates_unchanged(tmp_path: Path) -> None:
    class Released(Cancelled):
        pass

    def progress(percent: int, stage: str) -> None:
        if percent > 0:
            raise Released()

    src = write_image(tmp_path / "in", "png")
    with pytest.raises(Released):
        converters.convert("png", "gif", src, tmp_path / "out", {}, progress)


def test_quadratic_markdown_is_refused_quickly(tmp_path: Path) -> None:
    import time

    src = tmp_path / "in"
    src.write_text("![" * 60_000)  # half a minute of work for an unguarded markdown-it
    started = time.monotonic()
    error = fails("too_large", "md", "html", src)
    assert "too complex" in error.detail
    assert time.monotonic() - started < 10


def test_markdown_parsing_can_be_cancelled(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_text("[" * 20_000)  # one paragraph: a single parse call
    progress = Recorder(cancel_at=4)
    with pytest.raises(Cancelled):
        converters.convert("md", "html", src, tmp_path / "out", {}, progress)
    assert progress.calls[-1][1] == "parsing"


def test_markdown_output_amplification_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_text(f"[x]: https://example.com/{'a' * 2000}\n\n" + "[x] " * 20_000)
    error = fails("too_large", "md", "html", src)
    assert "the HTML would be over" in error.detail


@pytest.mark.parametrize(
    ("source", "target", "make"),
    [
        ("csv", "json", lambda path: write_csv(path, [["a", "b"]] + [["1", "2"]] * 200)),
        ("xlsx", "json", lambda path: write_xlsx(path, [["a", "b"]] + [[1, 2]] * 200)),
        ("xlsx", "csv", lambda path: write_xlsx(path, [["a", "b"]] + [["x" * 50, 2]] * 200)),
        ("pdf", "png", lambda path: image_pdf(path, COLOURS)),
    ],
)
def test_output_over_the_limit_is_refused(
    tmp_path: Path, source: str, target: str, make: Callable[[Path], Path]
) -> None:
    src = make(tmp_path / "in")
    error = fails("too_large", source, target, src, limits=Limits(max_output_bytes=2000))
    assert error.detail == "the result would be over 2,000 bytes"
