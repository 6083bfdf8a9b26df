"""Conversions end to end (CONTRACT.md §1, §3, §5, §6) against real processes: two `hubbub serve`
sharing a private Redis, a fresh PostgreSQL database and one data dir, with real `hubbub worker`
processes doing the work; and the embedded default (`hubbub serve` converting in-process).

Files are made in the test (Pillow, openpyxl). Every job is followed over `/ws/jobs/<id>/`: the
current state at once, progress that never goes down, one final state and nothing after it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pypdfium2 as pdfium
import pytest
from PIL import Image

from tests.live import conversions_kit as kit
from tests.live.conversions_kit import Farm, farm, wait_row
from tests.live.servers import HubbubServer, WorkerProcess, history, new_data_dir
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live]

AT_ONCE = 2.0  # seconds: "at once" for a first frame or a refusal


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared() -> Iterator[Farm]:
    """One farm (a, b and one worker) for the tests that leave every process running."""
    root = new_data_dir()
    try:
        with farm(root, workers=1) as made:
            yield made
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tokens(shared: Farm) -> dict[str, str]:
    return {name: shared.a.make_user(name) for name in ("alice", "bob")}


@pytest.fixture
def own_farm(data_dir: Path) -> Iterator[Farm]:
    """A farm of its own, without workers (the test starts and kills them)."""
    with farm(data_dir, workers=0) as made:
        yield made


@pytest.fixture
async def guests(shared: Farm) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    one, two = await kit.guest_client(shared.a), await kit.guest_client(shared.a)
    yield one, two
    await one.aclose()
    await two.aclose()


# -- helpers --------------------------------------------------------------------------------------


async def run_job(up: HubbubServer, watch: HubbubServer, token: str | None, data: bytes, filename: str,
                  target: str, *, options: Any = None, room: str | None = None,
                  timeout: float = 60) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Upload on ``up``, follow the job on ``watch``'s socket to its end; (final frame, frames)."""
    answer = await kit.upload(up, data, filename, target, token=token, options=options, room=room)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["state"] == "queued" and job["progress"] == 0 and job["result_url"] is None, job
    assert job["target"] == target and job["room"] == room, job
    sock = await kit.job_socket(watch, job["id"], token=token)
    try:
        first, took = await kit.first_frame(sock)
        assert took < AT_ONCE, f"first frame after {took:.2f}s"
        assert first["id"] == job["id"] and first["state"] in kit.STATES, first
        final = await kit.follow(sock, timeout)
        await asyncio.sleep(0.3)  # nothing may follow the final state
        kit.check_stream(sock.received)
    finally:
        await sock.close()
    return final, sock.received


async def fetch_result(server: HubbubServer, final: dict[str, Any], token: str | None,
                       content_type: str, filename: str) -> bytes:
    assert final["state"] == "done", final
    got = await kit.get(server, final["result_url"], token)
    assert got.status_code == 200, got.text[:300]
    assert got.headers["content-type"].startswith(content_type), got.headers
    disposition = got.headers["content-disposition"]
    assert disposition.startswith("attachment") and f'filename="{filename}"' in disposition, disposition
    return got.content


def near(a: tuple[int, ...], b: tuple[int, ...], tol: int = 16) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# -- 1. every family of pairs, end to end ---------------------------------------------------------


def _check_png_to_jpeg(content: bytes) -> None:
    image = Image.open(io.BytesIO(content))
    assert image.format == "JPEG" and image.size == (160, 120), (image.format, image.size)


def _check_jpeg_to_pdf(content: bytes) -> None:
    assert content.startswith(b"%PDF-")
    document = pdfium.PdfDocument(content)
    assert len(document) == 1
    width, height = document[0].get_size()
    assert abs(width / height - 120 / 80) < 0.02, (width, height)


def _check_pdf_to_zip(content: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.namelist() == ["page-0001.png", "page-0002.png", "page-0003.png"]
        for index, name in enumerate(archive.namelist(), start=1):
            image = Image.open(io.BytesIO(archive.read(name)))
            width, height = kit.page_size(index)
            assert image.format == "PNG" and near(image.size, (2 * width, 2 * height), 2), (name, image.size)


def _check_pdf_page_2(content: bytes) -> None:
    image = Image.open(io.BytesIO(content))
    width, height = kit.page_size(2)
    assert image.format == "PNG" and near(image.size, (2 * width, 2 * height), 2), image.size
    pixel = image.convert("RGB").getpixel((image.width - 10, image.height - 10))
    assert near(pixel, (120, 90, 200), 20), pixel  # page 2's colour, not page 1's (60, 90, 200)


def _xlsx(rows: list[list[Any]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(row)
    book.create_sheet("second").append(["not", "this", "sheet"])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _check_xlsx_to_csv(content: bytes) -> None:
    rows = list(csv.reader(io.StringIO(content.decode("utf-8"))))
    assert rows == [["name", "qty", "price"], ["bolt", "12", "0.25"], ["nut, hex", "7", "1.5"],
                    ["ünïcode", "", "3"]], rows


def _check_md_to_html(content: bytes) -> None:
    text = content.decode("utf-8")
    assert "<title>Report</title>" in text and "<h1>Report</h1>" in text
    assert "<strong>bold</strong>" in text and "<li>two</li>" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, text
    assert "<script>" not in text.lower().replace(" ", "")


PAIRS: dict[str, tuple[Callable[[], bytes], str, str, Any, str, str, Callable[[bytes], None]]] = {
    # name: (file, uploaded name, target, options, result content type, result name, check)
    "png-jpeg-max_width": (lambda: kit.png(640, 480), "photo.png", "jpeg", {"max_width": 160},
                           "image/jpeg", "photo.jpg", _check_png_to_jpeg),
    "jpeg-pdf": (kit.jpeg, "snap.jpg", "pdf", None, "application/pdf", "snap.pdf", _check_jpeg_to_pdf),
    "pdf-png-zip": (lambda: kit.pdf(3), "doc.pdf", "png", None, "application/zip", "doc.zip",
                    _check_pdf_to_zip),
    "pdf-png-page-2": (lambda: kit.pdf(3), "doc.pdf", "png", {"page": 2}, "image/png", "doc.png",
                       _check_pdf_page_2),
    "xlsx-csv": (lambda: _xlsx([["name", "qty", "price"], ["bolt", 12, 0.25], ["nut, hex", 7, 1.5],
                                ["ünïcode", None, 3]]),
                 "stock.xlsx", "csv", None, "text/csv", "stock.csv", _check_xlsx_to_csv),
    "md-html": (lambda: b"# Report\n\nSome **bold** text.\n\n<script>alert(1)</script>\n\n- one\n- two\n",
                "notes.md", "html", None, "text/html", "notes.html", _check_md_to_html),
}


@pytest.mark.parametrize("name", list(PAIRS))
async def test_each_pair_end_to_end_through_a_worker(shared: Farm, tokens: dict[str, str], name: str) -> None:
    make, filename, target, options, content_type, result_name, check = PAIRS[name]
    token = tokens["alice"]
    final, _ = await run_job(shared.a, shared.b, token, make(), filename, target, options=options)
    assert final["state"] == "done", (final, shared.logs())
    check(await fetch_result(shared.b, final, token, content_type, result_name))
    job = (await kit.get(shared.a, f"/api/conversions/{final['id']}", token)).json()
    assert job["state"] == "done" and job["progress"] == 100 and job["filename"] == filename, job


async def test_csv_to_xlsx_to_json_round_trip(shared: Farm, tokens: dict[str, str]) -> None:
    token = tokens["alice"]
    source = "name,qty,price,code,formula\nbolt,12,0.25,007,=1+1\nnut,7,1.5,010,plain\nünï,,3,x,y\n"
    final, _ = await run_job(shared.b, shared.a, token, source.encode(), "stock.csv", "xlsx")
    xlsx_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    xlsx = await fetch_result(shared.a, final, token, xlsx_type, "stock.xlsx")
    sheet = openpyxl.load_workbook(io.BytesIO(xlsx), read_only=True).worksheets[0]
    assert [list(r) for r in sheet.iter_rows(values_only=True)][:2] == [
        ["name", "qty", "price", "code", "formula"], ["bolt", 12, 0.25, "007", "=1+1"]]

    final, _ = await run_job(shared.a, shared.b, token, xlsx, "stock.xlsx", "json")
    assert final["state"] == "done", final
    rows = json.loads(await fetch_result(shared.b, final, token, "application/json", "stock.json"))
    assert rows == [
        {"name": "bolt", "qty": 12, "price": 0.25, "code": "007", "formula": "=1+1"},
        {"name": "nut", "qty": 7, "price": 1.5, "code": "010", "formula": "plain"},
        {"name": "ünï", "qty": None, "price": 3, "code": "x", "formula": "y"},
    ], rows


async def test_a_queued_job_waits_for_a_worker_servers_with_redis_do_not_convert(own_farm: Farm) -> None:
    token = own_farm.a.make_user("carol")
    answer = await kit.upload(own_farm.a, kit.png(), "wait.png", "webp", token=token)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    sock = await kit.job_socket(own_farm.b, job_id, token=token)
    first, took = await kit.first_frame(sock)
    assert took < AT_ONCE and first["state"] == "queued" and first["progress"] == 0, (first, took)
    await asyncio.sleep(4)  # two workers' poll intervals: nobody converts it
    assert (await kit.get(own_farm.b, f"/api/conversions/{job_id}", token)).json()["state"] == "queued"
    assert len(sock.received) == 1, sock.received
    # A queued job cancelled before any worker saw it is never converted.
    dropped = (await kit.upload(own_farm.a, kit.png(), "drop.png", "gif", token=token)).json()["id"]
    cancelled = await kit.post(own_farm.b, f"/api/conversions/{dropped}/cancel", token)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text
    own_farm.add_worker()
    final = await kit.follow(sock, timeout=20)
    assert final["state"] == "done", (final, own_farm.logs())
    await sock.close()
    done = await kit.post(own_farm.a, f"/api/conversions/{job_id}/cancel", token)
    assert done.status_code == 200 and done.json()["state"] == "done", done.text  # already final
    await asyncio.sleep(2)
    assert own_farm.row(dropped)["state"] == "cancelled" and own_farm.results(dropped) == []


# -- 2. progress is real --------------------------------------------------------------------------


async def test_a_60_page_pdf_reports_several_distinct_progress_values(
    shared: Farm, tokens: dict[str, str],
) -> None:
    final, frames = await run_job(shared.a, shared.b, tokens["alice"], kit.heavy_pdf(60), "sixty.pdf", "png",
                                  timeout=120)
    assert final["state"] == "done", (final, shared.logs())
    middle = sorted({f["progress"] for f in frames if 0 < f["progress"] < 100})
    assert len(middle) >= 3, kit.progresses(frames)
    assert any("of 60" in f["stage"] for f in frames), [f["stage"] for f in frames]


# -- 3. the outcome in a room ---------------------------------------------------------------------


async def test_a_job_with_a_room_posts_its_outcome_there_once(shared: Farm, tokens: dict[str, str]) -> None:
    token = tokens["alice"]
    watcher = await Socket.open(shared.b.ws, "conv-outcomes", token=tokens["bob"])
    try:
        final, _ = await run_job(shared.a, shared.a, token, kit.png(), "room.png", "gif",
                                 room="conv-outcomes")
        assert final["state"] == "done", final
        event = await watcher.wait_for(lambda e: e.get("type") == "message", timeout=10, what="the outcome")
        await asyncio.sleep(2)
        assert len(watcher.messages()) == 1, watcher.messages()
    finally:
        await watcher.close()
    assert event["user"] == "alice" and event["room"] == "conv-outcomes", event
    assert "room.png" in event["message"] and f"/api/conversions/{final['id']}/result" in event["message"]
    assert [m["id"] for m in await history(shared.a.http, "conv-outcomes", token)] == [event["id"]]


async def test_losing_access_to_the_room_does_not_kill_the_worker(own_farm: Farm) -> None:
    """The owner of a private room removes the job's owner before the job ends: the outcome can
    no longer be posted there, but the job must still end and the worker must live on."""
    f = own_farm
    alice, bob = f.a.make_user("alice"), f.a.make_user("bob")
    made = f.a.post("/api/rooms", {"name": "vault", "private": True}, token=bob)
    assert made.status_code == 201, made.text
    assert f.a.post("/api/rooms/vault/members", {"username": "alice"}, token=bob).status_code in (200, 201)
    answer = await kit.upload(f.a, kit.png(), "late.png", "jpeg", token=alice, room="vault")
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    async with httpx.AsyncClient(timeout=10) as client:
        removed = await client.delete(f.a.http + "/api/rooms/vault/members/alice", headers=kit.auth(bob))
    assert removed.status_code == 200, removed.text
    worker = f.add_worker()
    sock = await kit.job_socket(f.b, job_id, token=alice)
    try:
        final = await kit.follow(sock, timeout=10)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrow: {f.row(job_id)}\n{f.logs()}") from None
    finally:
        await sock.close()
    assert final["state"] in kit.FINAL, final
    assert worker.alive and "Traceback" not in worker.log_tail(200), worker.log_tail()
    after, _ = await run_job(f.a, f.b, alice, kit.png(), "after.png", "gif", timeout=20)
    assert after["state"] == "done", (after, f.logs())


async def test_a_job_whose_outcome_cannot_be_posted_does_not_wedge_the_queue(own_farm: Farm) -> None:
    f = own_farm
    alice, bob = f.a.make_user("alice"), f.a.make_user("bob")
    assert f.a.post("/api/rooms", {"name": "vault", "private": True}, token=bob).status_code == 201
    assert f.a.post("/api/rooms/vault/members", {"username": "alice"}, token=bob).status_code in (200, 201)
    answer = await kit.upload(f.a, kit.png(), "stuck.png", "jpeg", token=alice, room="vault")
    stuck = answer.json()["id"]
    async with httpx.AsyncClient(timeout=10) as client:
        removed = await client.delete(f.a.http + "/api/rooms/vault/members/alice", headers=kit.auth(bob))
    assert removed.status_code == 200, removed.text
    # The state three crashed attempts leave (see the test above), written directly.
    import psycopg

    with psycopg.connect(f.database_url) as conn:
        conn.execute("UPDATE conversions_job SET attempts = 3 WHERE id = %s", (stuck,))
    worker = f.add_worker()
    other = await kit.upload(f.a, kit.png(), "other.png", "gif", token=bob)
    sock = await kit.job_socket(f.b, other.json()["id"], token=bob)
    try:
        final = await kit.follow(sock, timeout=10)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.log_tail(6)}") from None
    finally:
        await sock.close()
    assert final["state"] == "done"
    assert f.row(stuck)["state"] in kit.FINAL


# -- 4. only the owner ----------------------------------------------------------------------------


async def test_only_the_owner_sees_cancels_fetches_or_follows_a_job(
    shared: Farm, tokens: dict[str, str],
) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    final, _ = await run_job(shared.a, shared.b, alice, kit.png(), "mine.png", "bmp")
    job_id = final["id"]
    for who in (bob, None):  # another user, an anonymous client
        for server in shared.a, shared.b:
            for answer in (await kit.get(server, f"/api/conversions/{job_id}", who),
                           await kit.post(server, f"/api/conversions/{job_id}/cancel", who),
                           await kit.get(server, f"/api/conversions/{job_id}/result", who)):
                assert answer.status_code == 404 and answer.json()["error"] == "not_found", answer.text
        sock = await kit.job_socket(shared.b, job_id, token=who)
        assert await sock.wait_closed(AT_ONCE) == 4403
        assert sock.received == []
    assert (await kit.get(shared.a, f"/api/conversions/{job_id}", alice)).json()["state"] == "done"
    # An id that is no job: the same 404.
    missing = "00000000-0000-0000-0000-000000000000"
    assert (await kit.get(shared.a, f"/api/conversions/{missing}", alice)).status_code == 404
    sock = await kit.job_socket(shared.a, missing, token=alice)
    assert await sock.wait_closed(AT_ONCE) == 4403


async def test_a_job_id_that_is_not_a_uuid_is_a_plain_404(shared: Farm, tokens: dict[str, str]) -> None:
    alice = tokens["alice"]
    answers = [await kit.get(shared.a, "/api/conversions/not-a-uuid", alice),
               await kit.post(shared.a, "/api/conversions/not-a-uuid/cancel", alice),
               await kit.get(shared.a, "/api/conversions/not-a-uuid/result", alice)]
    assert [a.status_code for a in answers] == [404, 404, 404], [a.text for a in answers]
    assert await kit.refusal(shared.a, "not-a-uuid", token=alice) in {("http", 403), ("close", 4403),
                                                                      ("close", 4400)}


async def test_a_guest_sessions_job_is_visible_to_that_session_only(
    shared: Farm, tokens: dict[str, str], guests: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    mine, other = guests
    csrf = {"X-CSRFToken": mine.cookies["csrftoken"]}
    refused = await kit.upload(shared.a, kit.png(), "g.png", "jpeg", client=mine)
    assert refused.status_code == 403, refused.text  # a session without its CSRF token
    answer = await kit.upload(shared.a, kit.png(), "g.png", "jpeg", client=mine, headers=csrf)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    sock = await kit.job_socket(shared.b, job_id, cookie=kit.cookie_header(mine))
    final = await kit.follow(sock, timeout=30)
    await sock.close()
    assert final["state"] == "done", final
    for server in shared.a, shared.b:  # the session is shared by both instances
        assert (await kit.get(server, f"/api/conversions/{job_id}", client=mine)).status_code == 200
        got = await kit.get(server, final["result_url"], client=mine)
        assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).format == "JPEG"
        assert (await kit.get(server, f"/api/conversions/{job_id}", client=other)).status_code == 404
        assert (await kit.get(server, f"/api/conversions/{job_id}", tokens["alice"])).status_code == 404
    cancel = await kit.post(shared.a, f"/api/conversions/{job_id}/cancel", client=other,
                            headers={"X-CSRFToken": other.cookies["csrftoken"]})
    assert cancel.status_code == 404, cancel.text
    stranger = await kit.job_socket(shared.a, job_id, cookie=kit.cookie_header(other))
    assert await stranger.wait_closed(AT_ONCE) == 4403 and stranger.received == []


# -- 5. bad input ---------------------------------------------------------------------------------


def _uploads(f: Farm) -> set[str]:
    folder = f.data_dir / "uploads"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


async def test_unsupported_pairs_and_unknown_files_are_refused_at_once(
    shared: Farm, tokens: dict[str, str],
) -> None:
    token = tokens["alice"]
    before = _uploads(shared)
    cases = [(kit.png(), "a.png", "xlsx", ["jpeg", "pdf", "webp"]),
             (b"a,b\n1,2\n", "t.csv", "pdf", ["json", "xlsx"]),
             (kit.pdf(1), "d.pdf", "docx", ["png", "txt"])]
    for data, name, target, named in cases:
        start = time.monotonic()
        answer = await kit.upload(shared.a, data, name, target, token=token)
        took = time.monotonic() - start
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["error"] == "unsupported_conversion" and took < AT_ONCE, (body, took)
        assert all(fmt in body["detail"] for fmt in named), body
    # Missing fields, an empty file, a bad room name: 400 with the error shape, never 422 or 500.
    async with httpx.AsyncClient(timeout=30) as client:
        url, auth = shared.a.http + "/api/conversions", kit.auth(token)
        for answer in (await client.post(url, files={"file": ("a.png", kit.png())}, headers=auth),
                       await client.post(url, data={"target": "jpeg"}, headers=auth),
                       await client.post(url, json={"target": "jpeg"}, headers=auth),
                       await kit.upload(shared.a, b"", "empty.png", "jpeg", token=token),
                       await kit.upload(shared.a, kit.png(), "a.png", "jpeg", token=token,
                                        room="no spaces!")):
            assert answer.status_code == 400, answer.text
            assert set(answer.json()) == {"error", "detail"}, answer.text
    # Random bytes, whatever the name says: not a format Hubbub converts.
    for name in ("noise.png", "noise.bin", "noise.csv"):
        answer = await kit.upload(shared.b, kit.random_bytes(), name, "jpeg", token=token)
        assert answer.status_code == 400, answer.text
        assert set(answer.json()) == {"error", "detail"} and answer.json()["detail"], answer.text
    assert _uploads(shared) == before  # nothing refused is kept


async def test_bad_options_are_refused_with_400(shared: Farm, tokens: dict[str, str]) -> None:
    token = tokens["alice"]
    for data, target, options in [
        (kit.png(), "jpeg", "{not json"),
        (kit.png(), "jpeg", "[1, 2]"),
        (kit.png(), "jpeg", '"max_width"'),
        (kit.png(), "jpeg", {"max_width": "wide"}),
        (kit.png(), "jpeg", {"max_width": 0}),
        (kit.png(), "jpeg", {"quality": 101}),
        (kit.png(), "jpeg", {"dpi": 300}),
        (kit.pdf(2), "png", {"page": 0}),
        (kit.png(), "png", {"quality": 50}),  # png is lossless: no quality
    ]:
        answer = await kit.upload(shared.a, data, "x.bin", target, token=token, options=options)
        assert answer.status_code == 400, (options, answer.text)
        assert set(answer.json()) == {"error", "detail"}, answer.text


async def test_a_page_past_the_end_fails_the_job_clearly(shared: Farm, tokens: dict[str, str]) -> None:
    final, _ = await run_job(shared.a, shared.b, tokens["alice"], kit.pdf(3), "d.pdf", "png",
                             options={"page": 9})
    assert final["state"] == "failed" and "3 pages" in final["error"], final


async def test_a_corrupt_png_fails_with_a_clear_error_and_the_worker_carries_on(
    shared: Farm, tokens: dict[str, str],
) -> None:
    token = tokens["alice"]
    watcher = await Socket.open(shared.b.ws, "conv-failures", token=token)
    try:
        final, _ = await run_job(shared.a, shared.b, token, kit.corrupt_png(), "broken.png", "jpeg",
                                 room="conv-failures")
        assert final["state"] == "failed", final
        assert "PNG" in final["error"] and "valid" in final["error"], final
        event = await watcher.wait_for(lambda e: e.get("type") == "message", what="the failure outcome")
        assert "broken.png" in event["message"] and final["error"] in event["message"], event
        await asyncio.sleep(1)
        assert len(watcher.messages()) == 1, watcher.messages()
    finally:
        await watcher.close()
    assert all(w.alive for w in shared.workers), shared.logs()
    after, _ = await run_job(shared.b, shared.a, token, kit.png(), "fine.png", "jpeg")
    assert after["state"] == "done", (after, shared.logs())


async def test_a_decompression_bomb_fails_as_too_large_without_decoding(
    shared: Farm, tokens: dict[str, str],
) -> None:
    start = time.monotonic()
    final, _ = await run_job(shared.a, shared.b, tokens["alice"], kit.bomb_png(), "bomb.png", "jpeg",
                             timeout=30)
    assert final["state"] == "failed", (final, shared.logs())
    error = final["error"].lower()
    assert "too large" in error or "limit" in error, final
    assert time.monotonic() - start < 15
    assert all(w.alive for w in shared.workers), shared.logs()


async def test_a_path_traversal_filename_is_only_displayed(shared: Farm, tokens: dict[str, str]) -> None:
    token = tokens["alice"]
    outside = [shared.data_dir.parent / "etc", Path("/etc/passwd.png"), shared.data_dir / "etc",
               shared.data_dir.parent.parent / "etc" / "passwd.png"]
    before = _uploads(shared)
    final, _ = await run_job(shared.a, shared.b, token, kit.png(), "../../etc/passwd.png", "jpeg")
    assert final["state"] == "done", final
    job = (await kit.get(shared.a, f"/api/conversions/{final['id']}", token)).json()
    assert job["filename"] == "passwd.png", job
    row = shared.row(final["id"])
    upload = Path(row["upload_path"])
    assert upload.parent == shared.data_dir / "uploads" and upload.name in _uploads(shared) - before, row
    assert len(upload.name) == 32 and all(c in "0123456789abcdef" for c in upload.name), upload
    assert Path(row["result_path"]).parent == shared.data_dir / "results", row
    for path in outside:
        assert not path.exists(), path
    await fetch_result(shared.b, final, token, "image/jpeg", "passwd.jpg")


async def test_an_upload_over_the_limit_is_refused_with_413(data_dir: Path) -> None:
    server = HubbubServer(data_dir / "small", {"HUBBUB_MAX_UPLOAD_MB": "1"}, name="small")
    server.start()
    try:
        token = server.make_user("dora")
        start = time.monotonic()
        big = kit.png() + b"\x00" * (2 * 1024 * 1024)
        answer = await kit.upload(server, big, "big.png", "jpeg", token=token)
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"] == "too_large" and time.monotonic() - start < AT_ONCE, answer.text
        small = await kit.upload(server, kit.png(), "ok.png", "jpeg", token=token)
        assert small.status_code == 202, small.text
        uploads = server.data_dir / "uploads"
        assert all(p.stat().st_size < 1024 * 1024 for p in uploads.iterdir()), list(uploads.iterdir())
    finally:
        code = server.stop()
    assert code == 0, server.log_tail()


async def test_an_oversized_upload_is_refused_before_its_body_is_sent(data_dir: Path) -> None:
    server = HubbubServer(data_dir / "small", {"HUBBUB_MAX_UPLOAD_MB": "1"}, name="small")
    server.start()
    try:
        token = server.make_user("erin")
        length = 20 * 1024 * 1024
        head = (f"POST /api/conversions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                f"Authorization: Bearer {token}\r\n"
                "Content-Type: multipart/form-data; boundary=xyz\r\n"
                f"Content-Length: {length}\r\n\r\n--xyz\r\n").encode()

        def ask() -> bytes:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
                conn.sendall(head)  # the headers and the start of the body only
                try:
                    return conn.recv(4096)
                except TimeoutError:
                    return b""

        answer = await asyncio.to_thread(ask)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    finally:
        server.stop()


# -- 6. cancel ------------------------------------------------------------------------------------


async def test_cancelling_a_long_job_stops_it_with_no_result(shared: Farm, tokens: dict[str, str]) -> None:
    token = tokens["alice"]
    answer = await kit.upload(shared.a, kit.heavy_pdf(150), "long.pdf", "png", token=token)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    sock = await kit.job_socket(shared.b, job_id, token=token)
    await sock.wait_for(lambda e: e["state"] == "running" and e["progress"] >= 5, timeout=60,
                        what="the job under way")
    start = time.monotonic()
    cancelled = await kit.post(shared.a, f"/api/conversions/{job_id}/cancel", token)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text
    final = await kit.follow(sock, timeout=AT_ONCE)
    assert final["state"] == "cancelled" and time.monotonic() - start < AT_ONCE, final
    assert final["progress"] < 100
    await asyncio.sleep(0.5)
    assert sock.received[-1] == final  # nothing after it
    await sock.close()
    job = (await kit.get(shared.b, f"/api/conversions/{job_id}", token)).json()
    assert job["state"] == "cancelled" and job["result_url"] is None, job

    # The worker stops converting (its partial file goes) and is free for the next job.
    worker = shared.workers[0]
    for _ in range(30):
        if not shared.results(job_id) and "cancelled" in worker.log_tail(5):
            break
        await asyncio.sleep(0.1)
    assert shared.results(job_id) == [], (shared.results(job_id), shared.logs())
    assert f"job {job_id} cancelled" in worker.log_tail(200), worker.log_tail()
    result = await kit.get(shared.a, f"/api/conversions/{job_id}/result", token)
    assert result.status_code == 409, result.text
    again = await kit.post(shared.a, f"/api/conversions/{job_id}/cancel", token)
    assert again.status_code == 200 and again.json()["state"] == "cancelled", again.text
    after, _ = await run_job(shared.b, shared.a, token, kit.png(), "next.png", "jpeg", timeout=10)
    assert after["state"] == "done", (after, shared.logs())
    await asyncio.sleep(3)
    assert shared.results(job_id) == [] and shared.row(job_id)["state"] == "cancelled"


# -- 7. a worker crashes --------------------------------------------------------------------------


@pytest.mark.timeout(240)
async def test_a_job_survives_a_kill_9_of_its_worker(own_farm: Farm) -> None:
    f = own_farm
    first, second = f.add_worker(wait=False), f.add_worker(wait=False)
    first.wait_ready()
    second.wait_ready()
    token = f.a.make_user("frank")
    room = "crash-room"
    watcher = await Socket.open(f.b.ws, room, token=token)
    answer = await kit.upload(f.a, kit.heavy_pdf(150), "crash.pdf", "png", token=token, room=room)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    sock = await kit.job_socket(f.b, job_id, token=token)
    await sock.wait_for(lambda e: e["progress"] > 10, timeout=60, what="progress over 10%")

    victim = f.holder(job_id)
    assert victim is not None, (f.row(job_id), f.logs())
    survivor = second if victim is first else first
    at_kill = f.row(job_id)["progress"]
    victim.kill9()
    killed = time.monotonic()

    row = await wait_row(f, job_id,
                         lambda r: r["state"] == "done" or f"-{survivor.pid}-" in f"-{r['lease_owner']}-",
                         60, "the other worker to take the job over")
    took_over = time.monotonic() - killed
    final = await kit.follow(sock, timeout=120)
    finished = time.monotonic() - killed
    print(f"\ncrash test: killed at {at_kill}%, taken over after {took_over:.1f}s, done {finished:.1f}s "
          f"after the kill; files: {f.results(job_id)}")
    assert final["state"] == "done", (final, f.logs())
    row = f.row(job_id)
    assert row["attempts"] == 2 and row["state"] == "done", row
    assert survivor.alive and f"job {job_id} done" in survivor.log_tail(200), survivor.log_tail()

    # Progress never went down on the socket, across the takeover.
    frames = sock.received
    kit.check_stream(frames)
    assert [fr["progress"] for fr in frames] == sorted(fr["progress"] for fr in frames)
    await sock.close()

    # One result: the zip of 150 pages (a dead worker's partial ".part" file is not a result).
    results = [name for name in f.results(job_id) if not name.startswith(".")]
    assert results == [f"{job_id}.zip"], f.results(job_id)
    content = await fetch_result(f.a, final, token, "application/zip", "crash.zip")
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        names = archive.namelist()
        assert names == [f"page-{i:04d}.png" for i in range(1, 151)], names[:3]
        assert archive.testzip() is None

    # One outcome message in the room, on the other instance and in the history.
    await watcher.wait_for(lambda e: e.get("type") == "message", timeout=10, what="the outcome")
    await asyncio.sleep(2)
    assert len(watcher.messages()) == 1, watcher.messages()
    await watcher.close()
    stored = await history(f.a.http, room, token)
    assert len(stored) == 1 and job_id in stored[0]["message"], stored
    assert took_over < 60 and finished < 120


# -- 8. the worker command ------------------------------------------------------------------------


def _bare_env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {**WorkerProcess(data_dir).env(), **extra}


@pytest.mark.parametrize("redis_url", [None, "http://nowhere", "redis://localhost:notaport/0"])
def test_worker_without_a_good_redis_url_exits_with_one_line_naming_it(
    data_dir: Path, redis_url: str | None,
) -> None:
    env = _bare_env(data_dir, **({"REDIS_URL": redis_url} if redis_url else {}))
    done = subprocess.run([sys.executable, "-m", "hubbub.cli", "worker"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=data_dir)
    assert done.returncode != 0, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "REDIS_URL" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


async def test_sigterm_idle_exits_0_and_during_a_job_gives_it_back(own_farm: Farm) -> None:
    f = own_farm
    idle = f.add_worker()
    await asyncio.sleep(0.5)
    idle.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(idle.wait, 10)
    assert code == 0, idle.log_tail()
    assert "Traceback" not in idle.log_tail(200)

    busy = f.add_worker()
    token = f.a.make_user("gina")
    answer = await kit.upload(f.a, kit.heavy_pdf(150), "term.pdf", "png", token=token)
    job_id = answer.json()["id"]
    sock = await kit.job_socket(f.b, job_id, token=token)
    await sock.wait_for(lambda e: e["state"] == "running" and e["progress"] >= 5, timeout=60,
                        what="the job under way")
    assert f.holder(job_id) is busy
    busy.send_signal(signal.SIGTERM)
    start = time.monotonic()
    code = await asyncio.to_thread(busy.wait, 15)
    assert code == 0, busy.log_tail()
    assert time.monotonic() - start < 5, "the worker took long to stop"
    assert "Traceback" not in busy.log_tail(200), busy.log_tail()
    row = f.row(job_id)
    assert row["state"] == "queued" and row["lease_owner"] == "" and row["attempts"] == 0, row
    queued = await sock.wait_for(lambda e: e["state"] == "queued", timeout=5, what="queued again")
    assert 0 < queued["progress"] < 100, queued
    assert [name for name in f.results(job_id)] == [], f.results(job_id)  # its partial file is gone

    f.add_worker()
    final = await kit.follow(sock, timeout=90)
    assert final["state"] == "done", (final, f.logs())
    assert f.row(job_id)["attempts"] == 1
    assert [name for name in f.results(job_id)] == [f"{job_id}.zip"]
    await sock.close()


# -- 9. the embedded default ----------------------------------------------------------------------


async def test_embedded_serve_converts_in_process(embedded: HubbubServer) -> None:
    token = embedded.make_user("hana")
    final, _ = await run_job(embedded, embedded, token, kit.png(90, 60), "pic.png", "webp")
    assert final["state"] == "done", (final, embedded.log_tail())
    content = await fetch_result(embedded, final, token, "image/webp", "pic.webp")
    image = Image.open(io.BytesIO(content))
    assert image.format == "WEBP" and image.size == (90, 60)
    assert (embedded.data_dir / "results" / f"{final['id']}.webp").is_file()
    formats = await kit.get(embedded, "/api/conversions/formats", token)
    assert formats.status_code == 200 and "webp" in formats.json()["conversions"]["png"], formats.text
    assert embedded.stop() == 0, embedded.log_tail()


async def test_embedded_sigterm_mid_job_exits_0_and_the_job_finishes_after_a_restart(
    embedded: HubbubServer,
) -> None:
    token = embedded.make_user("ines")
    answer = await kit.upload(embedded, kit.heavy_pdf(150), "emb.pdf", "png", token=token)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    sock = await kit.job_socket(embedded, job_id, token=token)
    seen = await sock.wait_for(lambda e: e["state"] == "running" and e["progress"] >= 5, timeout=60,
                               what="the job under way")
    await sock.close()
    start = time.monotonic()
    code = await asyncio.to_thread(embedded.stop)
    assert code == 0 and time.monotonic() - start < 15, (code, embedded.log_tail())
    assert "Traceback" not in embedded.log_tail(200), embedded.log_tail()
    await asyncio.to_thread(embedded.start)
    sock = await kit.job_socket(embedded, job_id, token=token)
    first, _ = await kit.first_frame(sock)
    assert first["progress"] >= seen["progress"], (first, seen)
    final = await kit.follow(sock, timeout=90)
    await sock.close()
    assert final["state"] == "done", (final, embedded.log_tail())
    assert sorted(p.name for p in (embedded.data_dir / "results").iterdir() if job_id in p.name) == [
        f"{job_id}.zip"]
