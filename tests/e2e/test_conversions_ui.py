"""Converting a file from a room: the progress bar moves, the result downloads, images preview."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from PIL import Image
from playwright.async_api import expect

from tests.e2e.conftest import Pages
from tests.e2e.ui import signup, tid, wait_open


def make_pdf(path: Path, pages: int) -> None:
    frames = [Image.new("RGB", (1240, 1754), (255, 255 - (i * 3) % 200, 255)) for i in range(pages)]
    frames[0].save(path, save_all=True, append_images=frames[1:], resolution=150)


async def test_the_progress_bar_moves_and_the_result_downloads(pages: Pages, tmp_path: Path) -> None:
    page = await pages.new()
    await page.goto("/r/files/")
    await signup(page, "conv")
    await wait_open(page)
    pdf = tmp_path / "report.pdf"
    make_pdf(pdf, 60)

    await tid(page, "attach-input").set_input_files(str(pdf))
    await expect(tid(page, "convert-file-name")).to_have_text("report.pdf")
    await tid(page, "convert-target").select_option("png")
    await tid(page, "convert-start").click()

    job = page.locator(".job").first
    bar = job.locator("progress")
    seen: list[float] = []
    for _ in range(600):  # sample the bar as a person would watch it (at most 60 s)
        seen.append(float(await bar.evaluate("b => b.value")))
        if await job.get_attribute("data-state") == "done":
            break
        await page.wait_for_timeout(100)
    assert await job.get_attribute("data-state") == "done", seen[-5:]
    assert seen == sorted(seen), "the progress bar went backwards"
    assert len({v for v in seen if 0 < v < 100}) >= 3, f"no real progress shown: {sorted(set(seen))}"

    async with page.expect_download() as info:
        await job.locator("[data-testid=job-download]").click()
    download = await info.value
    saved = tmp_path / "result.zip"
    await download.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert len(archive.namelist()) == 60 and archive.namelist()[0] == "page-0001.png"

    outcome = page.locator("li.message[data-id]", has_text="converted report.pdf to png")
    await expect(outcome).to_have_count(1)
    job_id = await job.get_attribute("data-job-id")
    href = await outcome.locator("a").get_attribute("href")
    assert href is not None and href.endswith(f"/api/conversions/{job_id}/result")
    pages.assert_clean()


async def test_an_image_result_is_previewed_in_the_room(pages: Pages, tmp_path: Path) -> None:
    page = await pages.new()
    await page.goto("/r/pics/")
    await signup(page, "pics")
    await wait_open(page)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (640, 400), (30, 120, 200)).save(photo)

    await tid(page, "attach-input").set_input_files(str(photo))
    await tid(page, "convert-target").select_option("webp")
    await tid(page, "convert-start").click()
    await expect(page.locator(".job[data-state=done]")).to_have_count(1, timeout=20_000)
    message = page.locator("li.message[data-id]", has_text="converted photo.png to webp")
    await expect(message).to_have_count(1)
    preview = message.locator("img.preview")
    await expect(preview).to_be_visible()
    width = await preview.evaluate("img => img.naturalWidth")
    assert width == 640
    png = io.BytesIO(await page.screenshot())
    assert Image.open(png).size[0] > 0
    pages.assert_clean()
