"""The HTML matrix in a real browser: Debian's Chromium, headless, driven by Selenium.

The page is what a person opens from a CI artefact, so it is checked the way they use it: it
loads with the network off, every cell shows its verdict's colour and a mark that needs no font,
a click on a cell opens that cell's evidence, the "failing cells only" filter leaves only failing
cells, and a fleet of 10 hosts x 8 drivers loads in under 2 s with every cell clickable. A
screenshot of each page is written for CI to keep (``$GPUCONFORM_ARTIFACTS`` or the test's tmp).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuconform.conformance.catalogue import CATALOGUE
from gpuconform.reports.evidence import Evidence, Verdict
from gpuconform.reports.matrix import build_matrix, merge
from gpuconform.reports.render_html import render_html

pytestmark = pytest.mark.integration  # under CI a skip (no chromium, no selenium) is a failure

CHROMIUM = os.environ.get("GPUCONFORM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GPUCONFORM_CHROMEDRIVER", "/usr/bin/chromedriver")

#: The colour each verdict's cell must show (light scheme), as the browser computes it.
COLOURS = {
    "pass": "rgb(218, 251, 225)",
    "rejected": "rgb(221, 244, 255)",
    "fail": "rgb(255, 235, 233)",
    "error": "rgb(255, 241, 229)",
    "inconclusive": "rgb(251, 239, 255)",
    "skip": "rgb(234, 238, 242)",
    "unsupported": "rgba(0, 0, 0, 0)",  # dashed outline instead of a fill
}
FAILING = {"fail", "error", "inconclusive"}
SMALL_DRIVERS = ("podman", "docker-legacy")
FLEET_DRIVERS = ("host", "podman", "docker-legacy", "docker-cdi", "kubernetes", "qemu", "qemu-single", "zz")


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GPUCONFORM_ARTIFACTS") or tmp_path) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:
            pytest.skip(f"{path} is missing (apt-get install -y {package}; .ci/setup.d/30-chromium.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1400,1000", "--force-prefers-color-scheme=light",
        # no network: a page that needs anything from outside must not load it
        "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
    ):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _record(driver: str, case: str, verdict: Verdict, host: str) -> Evidence:
    return Evidence(
        case=case,
        driver=driver,
        verdict=verdict,
        reason=f"{driver} {case} on {host}: {verdict.value}",
        host={"host": host, "simulated": True},
        request={"count": 1},
        granted=("GPU-aaaa",),
        seen=("GPU-aaaa",) if verdict is Verdict.PASS else ("GPU-bbbb",),
        commands=(
            {
                "argv": ["nvidia-smi", "-L"],
                "exit_code": 0,
                "stdout": f"GPU 0 of {driver}/{case}",
                "stderr": "",
                "duration_s": 0.1,
            },
        ),  # fmt: skip
        timings={"provision_s": 0.5},
        simulated=True,
        run_id=f"run-{host}",
    )


def _meta(host: str) -> dict[str, Any]:
    return {"run_id": f"run-{host}", "host": {"host": host, "simulated": True, "gpu_count": 4}}


def _small_page(tmp_path: Path) -> Path:
    """Two drivers x the catalogue's first cases, every verdict present, failing ones included."""
    verdicts = list(Verdict)
    records = [
        _record(d, case.id, verdicts[(i + j) % len(verdicts)], "gpu-a")
        for j, d in enumerate(SMALL_DRIVERS)
        for i, case in enumerate(CATALOGUE[:10])
    ]
    page = tmp_path / "matrix.html"
    page.write_text(render_html(build_matrix(_meta("gpu-a"), records), records), encoding="utf-8")
    return page


def _cells(browser: Any) -> list[dict[str, Any]]:
    script = """return [...document.querySelectorAll('td.v:not(.missing)')].map(td => {
        const mk = td.querySelector('i.mk'), r = mk.getBoundingClientRect(), s = getComputedStyle(mk);
        return {cell: td.dataset.cell, verdict: [...td.classList].find(c => c != 'v' && c != 'failing'),
                bg: getComputedStyle(td).backgroundColor, ev: td.querySelector('a').dataset.ev,
                text: td.innerText.trim(), mark: [r.width, r.height],
                painted: s.backgroundImage != 'none' || s.backgroundColor != 'rgba(0, 0, 0, 0)'
                         || parseFloat(s.borderTopWidth) > 0};
    });"""
    return list(browser.execute_script(script))


def test_page_loads_offline_with_every_cell_in_its_verdict_colour(browser: Any, tmp_path: Path) -> None:
    page = _small_page(tmp_path)
    browser.get(page.as_uri())
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources == [], f"the page fetched {resources}: it must be self-contained"
    cells = _cells(browser)
    assert len(cells) == 20
    assert {c["verdict"] for c in cells} == set(COLOURS)
    for c in cells:
        assert c["bg"] == COLOURS[c["verdict"]], c
        assert c["text"] == c["verdict"], c  # the verdict word is on the cell
        assert c["mark"][0] >= 8 and c["mark"][1] >= 2 and c["painted"], c  # a visible shape, no font
    shot = _artifacts(tmp_path) / "matrix.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


def test_a_click_on_a_cell_shows_that_cells_evidence(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(_small_page(tmp_path).as_uri())
    for cell in _cells(browser):
        link = browser.find_element(By.CSS_SELECTOR, f"td[data-cell='{cell['cell']}'] a")
        before = browser.find_elements(By.ID, cell["ev"])  # absent until its host's list is built
        assert all(p.get_property("open") is False for p in before), cell
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
        link.click()
        panel = browser.find_element(By.ID, cell["ev"])
        assert panel.get_property("open") is True, cell
        assert panel.is_displayed()
        driver = next(d for d in SMALL_DRIVERS if cell["cell"].startswith(f"{d}-"))
        case = cell["cell"].removeprefix(f"{driver}-")
        body = panel.text
        assert f"{driver} / {case}" in body and cell["verdict"] in body
        assert f"GPU 0 of {driver}/{case}" in body  # the command's stdout of this very cell
    shot = _artifacts(tmp_path) / "matrix-evidence.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


def test_failing_cells_only_filter_hides_every_passing_cell(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(_small_page(tmp_path).as_uri())
    cells = _cells(browser)
    browser.find_element(By.ID, "only-failing").click()
    shown = {
        td.get_attribute("data-cell")
        for td in browser.find_elements(By.CSS_SELECTOR, "td.v:not(.missing)")
        if td.is_displayed()
    }
    expected = {c["cell"] for c in cells if c["verdict"] in FAILING}
    assert expected and shown == expected
    panels = [p for p in browser.find_elements(By.CSS_SELECTOR, "details.ev") if p.is_displayed()]
    assert {p.get_attribute("data-verdict") for p in panels} <= FAILING
    assert len(panels) == len(expected)
    shot = _artifacts(tmp_path) / "matrix-failing-only.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    browser.find_element(By.ID, "only-failing").click()
    assert len([td for td in browser.find_elements(By.CSS_SELECTOR, "td.v") if td.is_displayed()]) == 20


def test_fleet_of_10_hosts_by_8_drivers_loads_under_2s_with_every_cell_clickable(
    browser: Any, tmp_path: Path
) -> None:
    verdicts = list(Verdict)
    matrices, records = [], []
    for h in range(10):
        host = f"gpu-{h:02d}"
        mine = [
            _record(d, case.id, verdicts[(h + j + i) % len(verdicts)], host)
            for j, d in enumerate(FLEET_DRIVERS)
            for i, case in enumerate(CATALOGUE)
        ]
        matrices.append(build_matrix(_meta(host), mine))
        records += mine
    fleet = merge(matrices)
    assert len(fleet.hosts) == 10 and len(fleet.drivers) == 8
    page = tmp_path / "fleet.html"
    page.write_text(render_html(fleet, records), encoding="utf-8")
    start = time.monotonic()
    browser.get(page.as_uri())  # returns once the load event has fired
    wall = time.monotonic() - start
    load_ms = browser.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd")
    print(f"fleet page: {page.stat().st_size / 1e6:.1f} MB, {len(fleet.cells)} cells, "
          f"load event at {load_ms:.0f} ms, get() {wall:.2f} s")  # fmt: skip
    assert load_ms < 2000  # the page's own load event; get() adds the webdriver round trip
    # Every cell links to its own panel (checked for all 2000), and a real click event opens it
    # (one cell per host and driver: each click re-lays out a page of 2000 panels).
    clicked, bad = browser.execute_script("""
        const cells = [...document.querySelectorAll('td.v:not(.missing)')], bad = [], seen = {};
        const label = td => td.dataset.cell.replace(
            /^(podman|host|docker-legacy|docker-cdi|kubernetes|qemu-single|qemu|zz)-/, '$1 / ');
        let clicked = 0;
        for (const td of cells) {
            const a = td.querySelector('a[data-ev]');
            if (!a) { bad.push(td.dataset.cell + ': no link'); continue; }
            const key = td.closest('section').dataset.host + '/' + td.cellIndex;
            if (seen[key]) continue;
            seen[key] = true;
            a.dispatchEvent(new MouseEvent('click', {bubbles: true, cancelable: true}));
            clicked++;
            const d = document.getElementById(a.dataset.ev);
            if (!d || !d.open) bad.push(a.dataset.ev + ': the click did not open its panel');
            else d.open = false;
        }
        evsAll();
        for (const td of cells) {
            const d = document.getElementById(td.querySelector('a').dataset.ev);
            if (!d || !d.querySelector('summary').textContent.includes(label(td)))
                bad.push(td.dataset.cell + ': no panel of its own');
        }
        return [clicked, bad.slice(0, 10)];
    """)
    assert clicked == 10 * 8
    assert bad == []
    assert browser.execute_script("return document.querySelectorAll('details.ev').length") == len(fleet.cells)
    browser.execute_script("window.scrollTo(0, 0)")
    shot = _artifacts(tmp_path) / "fleet.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
