"""The dashboard in a real headless Chromium: the page loads, lists the runs and draws its charts."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdk_tools.lab.client import post_report, register_device
from sdk_tools.lab.examples import PLANS, example_report

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = Path(tempfile.gettempdir()) / "memwall-lab-dashboard.png"
MiB = 2**20

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,2000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _painted_pixels(browser, canvas_id: str) -> int:
    return browser.execute_script(
        """const c = document.getElementById(arguments[0]);
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) n++;
        return n;""",
        canvas_id,
    )


@pytest.mark.parametrize("db_factory", ["sqlite"], indirect=True)
def test_dashboard_shows_runs_charts_and_failures(new_server, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    lab_server = new_server().start()  # its own database, so the page shows exactly these runs

    devices = [register_device(lab_server.url, name) for name in ("pixel-8", "iphone-15", "<b>host</b>")]
    posted = 0
    for index, (device_id, token) in enumerate(devices):
        for plan_index, plan in enumerate(PLANS):
            predicted = (160 - 40 * plan_index) * MiB
            for run in range(2):
                measured = int(predicted * (0.92 + 0.08 * index + 0.03 * run))
                report = example_report(
                    device_id, plan=plan, predicted_peak_bytes=predicted, measured_delta_bytes=measured
                )
                post_report(lab_server.url, token, report)
                posted += 1
    post_report(lab_server.url, devices[0][1], example_report(devices[0][0], status="oom", plan=PLANS[0]))
    post_report(lab_server.url, devices[1][1], example_report(devices[1][0], status="crash", plan=PLANS[0]))

    browser.get(lab_server.url + "/")
    WebDriverWait(browser, 20).until(lambda b: b.execute_script("return document.body.dataset.loaded") == "true")

    assert browser.title == "memwall device lab"
    assert not browser.find_element(By.ID, "load-error").is_displayed()
    runs = browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
    assert len(runs) == posted + 2
    # Names from the apps are shown as text, never interpreted as markup.
    assert "<b>host</b> (Pixel 8)" in browser.find_element(By.ID, "runs").text
    failed = browser.find_elements(By.CSS_SELECTOR, "#failed tbody tr")
    assert {row.find_elements(By.TAG_NAME, "td")[5].text for row in failed} >= {"oom", "crash"}

    peak = browser.execute_script(
        "const c = Chart.getChart('peak-chart'); return c.data.datasets.map(d => d.data.length);"
    )
    assert peak == [len(devices) * len(PLANS)] * 2
    assert _painted_pixels(browser, "peak-chart") > 5000
    bars = browser.execute_script("return Chart.getChart('breakdown-chart').data.labels;")
    assert {"planned arena", "predicted peak", "measured peak"} <= set(bars)
    assert _painted_pixels(browser, "breakdown-chart") > 2000

    runs[-1].click()
    WebDriverWait(browser, 10).until(
        lambda b: b.find_element(By.ID, "breakdown-title").text.startswith(
            f"#{runs[-1].find_element(By.TAG_NAME, 'td').text} "
        )
    )
    browser.save_screenshot(str(SCREENSHOT))
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


XSS = '<img src=x onerror="window.__pwned=1">'


def _hostile_report(device_id: str) -> dict:
    report = example_report(device_id, status="error", plan={"name": '"><svg onload=window.__pwned=1>'})
    report["device"]["model"] = XSS
    report["bundle"]["model"] = "<script>window.__pwned=1</script>"
    report["bundle"]["name"] = "javascript:window.__pwned=1"
    report["error"] = {"kind": "=HYPERLINK(1)", "message": f"</td></tr></table>{XSS}"}
    return report


@pytest.mark.parametrize("db_factory", ["sqlite"], indirect=True)
def test_hostile_reports_render_as_inert_text(new_server, browser) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from lab_fuzz import reports
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    lab_server = new_server().start()
    device_id, token = register_device(lab_server.url, "<script>window.__pwned=1</script>")
    hostile = post_report(lab_server.url, token, _hostile_report(device_id))["id"]
    posted = [1]

    @settings(
        max_examples=3,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(drawn=st.lists(reports(device_id), min_size=8, max_size=8))
    def page_stays_inert(drawn: list[dict]) -> None:
        for report in drawn:
            report["run"]["report_id"] = str(uuid.uuid4())
            post_report(lab_server.url, token, report)
        posted[0] += len(drawn)
        browser.get(lab_server.url + "/")
        WebDriverWait(browser, 20).until(lambda b: b.execute_script("return document.body.dataset.loaded") == "true")
        assert not browser.find_element(By.ID, "load-error").is_displayed()
        assert len(browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) == posted[0]
        injected = browser.execute_script(
            "return [window.__pwned, document.scripts.length,"
            " document.querySelectorAll('body img, body svg, body iframe, body object').length];"
        )
        assert injected == [None, 2, 0]
        table = browser.find_element(By.ID, "runs").text
        assert f"<script>window.__pwned=1</script> ({XSS})" in table
        assert f"</td></tr></table>{XSS}" in browser.find_element(By.ID, "failed").text
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors

    page_stays_inert()
    row = browser.find_element(By.CSS_SELECTOR, f"#runs tbody tr[data-id='{hostile}']")
    row.click()
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "breakdown-title").text.startswith(f"#{hostile} "))
    facts = browser.find_element(By.ID, "breakdown-facts").text
    assert f"=HYPERLINK(1): </td></tr></table>{XSS}" in facts
    assert browser.execute_script("return window.__pwned") is None
