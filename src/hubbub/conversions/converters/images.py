"""Raster images: png, jpeg, webp, gif, bmp, tiff → any of those, or a one-page pdf.

Options: `max_width` / `max_height` shrink the image to fit, keeping its aspect ratio (never
enlarging it); `quality` (1-100, default 85) applies to jpeg, webp and pdf (whose pages Pillow
stores as JPEG).

Animated or multi-frame sources (GIF, WebP, TIFF) convert their first frame only. EXIF
orientation is applied, so phone photos come out upright. Transparency is kept where the target
can hold it (png, webp, tiff, gif) and flattened onto white otherwise (jpeg, bmp, pdf).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from .base import (
    DEFAULT_LIMITS,
    ConversionError,
    Options,
    Output,
    Progress,
    current_limits,
    fmt_int,
)
from .registry import OptionSpec, register

# Pillow refuses to decode (DecompressionBombError) past twice this and warns past it; our own
# check below turns anything over the limit into "too_large" before decoding.
Image.MAX_IMAGE_PIXELS = DEFAULT_LIMITS.max_image_pixels

IMAGE_FORMATS = ("png", "jpeg", "webp", "gif", "bmp", "tiff")
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF",
               "pdf": "PDF"}
_CONTENT_TYPE = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "pdf": "application/pdf",
}
_EXTENSION = {"jpeg": "jpg", "tiff": "tif"}
# Modes each encoder takes as they are; anything else is converted (see _fit_mode).
_NATIVE_MODES = {
    "png": {"1", "L", "LA", "I", "I;16", "RGB", "RGBA", "P"},
    "jpeg": {"L", "RGB", "CMYK"},
    "webp": {"RGB", "RGBA"},
    "gif": {"L", "P", "RGB", "RGBA"},
    "bmp": {"1", "L", "P", "RGB"},
    "tiff": {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"},
    "pdf": {"1", "L", "RGB", "CMYK"},
}
_KEEPS_ALPHA = {"png", "webp", "gif", "tiff"}
_LOSSY = {"jpeg", "webp", "pdf"}
DEFAULT_QUALITY = 85

_SIZE_OPTIONS = {
    "max_width": OptionSpec(minimum=1, maximum=100_000, help="shrink to at most this many pixels wide"),
    "max_height": OptionSpec(minimum=1, maximum=100_000, help="shrink to at most this many pixels high"),
}
_QUALITY_OPTION = {
    "quality": OptionSpec(minimum=1, maximum=100, default=DEFAULT_QUALITY, help="1 (smallest) to 100 (best)")
}


def convert_image(src: Path, dst: Path, options: Options, progress: Progress, *, source: str,
                  target: str) -> Output:
    progress(5, "reading image")
    image = _load(src, source)
    progress(40, f"decoded {image.width}x{image.height}")
    image = _shrink(image, options.get("max_width"), options.get("max_height"))
    progress(60, f"resized to {image.width}x{image.height}")
    original_mode = image.mode
    image = _fit_mode(image, target)
    progress(70, f"encoding {target}")
    params: dict[str, Any] = {}
    if target in _LOSSY:
        params["quality"] = options.get("quality", DEFAULT_QUALITY)
    icc = image.info.get("icc_profile")
    if icc and image.mode == original_mode and target in {"png", "jpeg", "webp", "tiff"}:
        params["icc_profile"] = icc
    if target == "tiff":
        params["compression"] = "tiff_adobe_deflate"
    image.save(dst, _PIL_FORMAT[target], **params)
    progress(100, "done")
    return Output(_EXTENSION.get(target, target), _CONTENT_TYPE[target])


def _load(src: Path, source: str) -> Image.Image:
    """Open and decode the first frame, refusing bombs before any pixel is decoded."""
    limit = current_limits().max_image_pixels
    name = _PIL_FORMAT[source]
    try:
        # Past MAX_IMAGE_PIXELS Pillow warns (we refuse just below) and past twice it raises
        # DecompressionBombError; both happen on the header alone, before decoding.
        opened = Image.open(src, formats=[name])
        with opened:
            width, height = opened.size
            if width * height > limit:
                raise _too_large(width, height, limit)
            opened.seek(0)
            opened.load()
            try:
                image = ImageOps.exif_transpose(opened)  # a copy, so closing `opened` is fine
            except Exception:  # a broken EXIF block is no reason to refuse the pixels
                image = opened.copy()
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the latter under -W error
        raise ConversionError("too_large", f"the image is too large to decode ({exc})") from exc
    except ConversionError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError…
        raise ConversionError("corrupt", f"not a valid {source.upper()} image ({_reason(exc)})") from exc
    return image


def _too_large(width: int, height: int, limit: int) -> ConversionError:
    return ConversionError(
        "too_large",
        f"the image is {width}x{height} = {fmt_int(width * height)} pixels; the limit is {fmt_int(limit)}",
    )


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _shrink(image: Image.Image, max_width: int | None, max_height: int | None) -> Image.Image:
    width, height = image.size
    scale = min(1.0, (max_width or width) / width, (max_height or height) / height)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if image.mode in ("1", "P"):  # resampling a palette is nearest-neighbour only
        image = image.convert("RGBA" if _has_alpha(image) else "RGB")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _fit_mode(image: Image.Image, target: str) -> Image.Image:
    """Convert to a mode the target encoder takes: RGBA → jpeg is flattened onto white, etc."""
    native = _NATIVE_MODES[target]
    if image.mode in native and not (_has_alpha(image) and target not in _KEEPS_ALPHA):
        return image
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "F"):
        # 16-bit greyscale: scale to 8 bits rather than clip everything above 255 to white.
        if image.mode != "F":
            image = image.convert("I").point(lambda v: v * (1 / 256))
        return _fit_mode(image.convert("L"), target)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        if target in _KEEPS_ALPHA:
            return rgba
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("1", "L") and "L" in native:
        return image.convert("L")
    return image.convert("RGB")


def _register() -> None:
    for source in IMAGE_FORMATS:
        for target in (*IMAGE_FORMATS, "pdf"):
            options = {**_SIZE_OPTIONS, **(_QUALITY_OPTION if target in _LOSSY else {})}

            def converter(src: Path, dst: Path, options: Options, progress: Progress,
                          _source: str = source, _target: str = target) -> Output:
                return convert_image(src, dst, options, progress, source=_source, target=_target)

            converter.__name__ = f"{source}_to_{target}"
            register(source, target, options)(converter)


_register()
