"""The web page in a real headless browser (Debian's chromium driven by Playwright; no download)."""

from __future__ import annotations

import io
import shutil
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from serve_helpers import ThresholdPredictor, free_port

from medinfer.serve.api import create_app
from medinfer.serve.worker import Worker

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,  # a live uvicorn server and a headless browser
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"),
]


@pytest.fixture
def live_service(make_config, store):
    import uvicorn

    cfg = make_config()
    app = create_app(cfg, store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield cfg, store, app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_jobs_list_job_page_with_overlay_and_health(live_service) -> None:
    cfg, store, app, url = live_service
    token = store.create_token("nurse", ["read", "submit"])
    arr = np.zeros((48, 48, 3), np.uint8)
    arr[12:36, 12:36] = 230
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    client = TestClient(app)
    r = client.post("/api/v1/studies", headers={"Authorization": f"Bearer {token}"},
                    files={"files": ("frame.png", buf.getvalue(), "image/png")})
    [job_id] = r.json()["jobs"]
    assert Worker(cfg, store, "w", lambda a: ThresholdPredictor()).run_once()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(f"{url}/ui/")
            assert "/ui/" in page.url and page.locator("body").inner_text().find(
                "missing or invalid API token") >= 0  # not signed in yet
            page.goto(f"{url}/ui/login")
            page.fill("#token", "wrong")
            page.click("#signin")
            assert page.locator("#error").inner_text() == "invalid token"
            page.fill("#token", token)
            page.click("#signin")
            page.wait_for_url(f"{url}/ui/")
            assert "done 1" in page.locator("#health").inner_text()
            row = page.locator("#jobs tr", has_text="png").first
            assert "done" in row.inner_text()
            row.locator("a").click()
            page.wait_for_url(f"{url}/ui/jobs/{job_id}")
            assert page.locator("#state").inner_text() == "done"
            overlay = page.locator("#overlay")
            overlay.wait_for()
            page.wait_for_function("document.querySelector('#overlay').complete")
            size = page.evaluate("[document.querySelector('#overlay').naturalWidth,"
                                 " document.querySelector('#overlay').naturalHeight]")
            assert size == [48, 48]  # the overlay PNG loaded (authenticated by the cookie)
            assert '"lesion": 576' in page.locator("#summary").inner_text()
            page.goto(f"{url}/health")
            assert '"status":"ok"' in page.locator("body").inner_text().replace(" ", "")
        finally:
            browser.close()
