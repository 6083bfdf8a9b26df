"""The conversions part of the HTTP API (CONTRACT.md §3, §6)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpRequest, JsonResponse
from ninja import File, Form, Router, Schema
from ninja.files import UploadedFile

from hubbub.conversions import converters, services
from hubbub.conversions.models import JobState
from hubbub.errors import BadOption, Invalid, NotFound, NotReady, TooLarge, UnsupportedConversion

router = Router(tags=["conversions"])


class JobOut(Schema):
    id: str
    state: str
    progress: int
    stage: str
    error: str | None
    result_url: str | None
    source: str
    target: str
    room: str | None
    filename: str


class FormatsOut(Schema):
    conversions: dict[str, list[str]]


class ErrorOut(Schema):
    error: str
    detail: str


ERRORS: dict[int, type[Schema]] = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut,
                                   413: ErrorOut}


def upload_limit() -> int:
    return int(settings.HUBBUB_MAX_UPLOAD_MB) * 1024 * 1024


@router.get("/formats", response={200: FormatsOut})
def formats(request: HttpRequest) -> dict[str, Any]:
    """What converts to what (source format → targets), from the converters' registry."""
    return {"conversions": converters.supported()}


@router.post("", response={202: JobOut, **ERRORS})
def create(request: HttpRequest, file: File[UploadedFile], target: Form[str],
           room: Form[str | None] = None, options: Form[str | None] = None) -> JsonResponse:
    """Upload a file to convert. The source format is sniffed from the content. Answers 202 with
    the queued Job; follow it at ``/ws/jobs/<id>/`` or by polling ``GET /api/conversions/<id>``."""
    from hubbub.api import caller

    actor = caller(request)
    if file.size is not None and file.size > upload_limit():
        raise TooLarge(f"the file is over {settings.HUBBUB_MAX_UPLOAD_MB} MB")
    try:
        parsed = services.parse_options(options)
    except Invalid as exc:
        raise BadOption(exc.detail) from None
    target = target.strip().lower()
    # Stored under a generated name: the uploaded name is only ever displayed.
    upload = services.data_path("uploads", uuid.uuid4().hex)
    with open(upload, "wb") as out:
        for chunk in file.chunks():
            out.write(chunk)
    try:
        source = converters.sniff(upload, file.name)
        if source is None:
            raise UnsupportedConversion(
                f"the file is not a format Hubbub converts; supported: {_supported_text()}")
        try:
            conversion = converters.lookup(source, target)
            parsed = converters.validate_options(conversion, parsed)
            target = conversion.target  # the canonical name ("jpg" → "jpeg")
        except converters.ConversionError as exc:
            error = UnsupportedConversion if exc.code == "unsupported_conversion" else BadOption
            raise error(exc.detail) from None
        job = services.job_create(actor=actor, filename=_display_name(file.name), upload=upload,
                                  source=source, target=target, options=parsed,
                                  room=room.strip() if room and room.strip() else None)
    except BaseException:
        services.remove_quietly(upload)
        raise
    return JsonResponse(services.job_out(job), status=202)


def _supported_text() -> str:
    return "; ".join(f"{src} → {', '.join(targets)}" for src, targets in converters.supported().items())


def _display_name(name: str | None) -> str:
    base = Path((name or "upload").replace("\\", "/")).name
    cleaned = "".join(c for c in base if c.isprintable())[:200]
    return cleaned or "upload"


@router.get("/{job_id}", response={200: JobOut, **ERRORS})
def get(request: HttpRequest, job_id: str) -> dict[str, Any]:
    from hubbub.api import caller

    return services.job_out(services.job_for_owner(actor=caller(request), job_id=job_id))


@router.post("/{job_id}/cancel", response={200: JobOut, **ERRORS})
def cancel(request: HttpRequest, job_id: str) -> dict[str, Any]:
    from hubbub.api import caller

    return services.job_out(services.job_cancel(actor=caller(request), job_id=job_id))


# The 200 answer is the file itself (any content type): say so, since ninja cannot infer it.
RESULT_200 = {"responses": {"200": {"description": "the converted file, as an attachment",
                                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}}}


@router.get("/{job_id}/result", response={**ERRORS, 409: ErrorOut}, openapi_extra=RESULT_200)
def result(request: HttpRequest, job_id: str) -> FileResponse:
    """The converted file, as an attachment, once the job is done (409 before)."""
    from hubbub.api import caller

    job = services.job_for_owner(actor=caller(request), job_id=job_id)
    if job.state != JobState.DONE:
        raise NotReady(f"the conversion is {job.state}, not done")
    path = Path(job.result_path)
    if not path.is_file():
        raise NotFound("the result file is gone")
    name = f"{Path(job.filename).stem or 'converted'}.{job.result_extension}"
    return FileResponse(open(path, "rb"), as_attachment=True, filename=name,
                        content_type=job.result_content_type or "application/octet-stream")
