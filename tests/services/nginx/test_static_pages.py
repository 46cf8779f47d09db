"""The demo page and the API page, in a real headless browser (Debian's chromium driven by
Selenium) against the running local stack, as a user sees them.

Screenshots go to the test's temporary folder; with UPDATE_SCREENSHOTS=1 they replace
docs/demo.png and docs/api.png.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import requests

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromium-driver are missing: ./stack test installs them (scripts/bootstrap.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1000",
                 "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A real photo with one object (from cv_sod's evaluation set), as PNG."""
    import cv2

    from training.cv_sod_data import REAL_PHOTOS_DIR

    path = tmp_path_factory.mktemp("demo") / "scene.png"
    cv2.imwrite(str(path), cv2.imread(str(REAL_PHOTOS_DIR / "coffee.jpg")))
    return path


def keep_screenshot(driver, tmp_path, name: str) -> None:
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copy(path, REPO_ROOT / "docs" / name)


def only_own_resources(driver, url: str) -> None:
    """Nothing came from elsewhere: the pages work without internet access."""
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith((url, "blob:")) for name in loaded), loaded


def visible(driver, element_id: str):
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 30).until(expected_conditions.visibility_of_element_located(("id", element_id)))


def test_programs_still_get_the_json_index_at_the_root(stack):
    index = requests.get(f"{stack.url}/", timeout=5)
    assert index.headers["Content-Type"] == "application/json" and index.json()["demo"] == "/"
    page = requests.get(f"{stack.url}/", headers={"Accept": "text/html"}, timeout=5)
    assert page.headers["Content-Type"].startswith("text/html") and "demo.js" in page.text
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


def test_the_demo_page_classifies_text_and_masks_an_image(stack, browser, scene, tmp_path):
    browser.get(stack.url + "/")
    text = browser.find_element("id", "text-input")
    text.clear()
    text.send_keys("物流太慢了，非常失望")
    browser.find_element("id", "text-submit").click()
    visible(browser, "text-result")
    assert browser.find_element("id", "text-label").text == "NEG"
    assert int(browser.find_element("id", "text-latency").text) >= 0
    timing = browser.find_element("id", "text-timing").text
    assert all(f"{stage} " in timing for stage in ("preprocess", "queue", "model", "postprocess")), timing
    bar = browser.find_element("id", "text-bar").get_attribute("style")
    assert "width:" in bar.replace(" ", "")

    browser.find_element("id", "image-input").send_keys(str(scene))
    browser.find_element("id", "image-submit").click()
    visible(browser, "image-result")
    sizes = browser.execute_script(
        "const m = document.getElementById('image-mask'), o = document.getElementById('image-original'),"
        " c = document.getElementById('image-overlay');"
        "return [m.naturalWidth, m.naturalHeight, o.naturalWidth, c.width, c.height];")
    import cv2

    height, width = cv2.imread(str(scene)).shape[:2]
    assert sizes == [width, height, width, width, height], "mask, photo and overlay at the photo's size"
    salient_share = browser.execute_script(
        "const m = document.getElementById('image-mask'), c = document.createElement('canvas');"
        "c.width = m.naturalWidth; c.height = m.naturalHeight; const x = c.getContext('2d'); x.drawImage(m, 0, 0);"
        "const d = x.getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let i = 0; i < d.length; i += 4) n += d[i] > 127; return n / (c.width * c.height);")
    assert 0.01 < salient_share < 0.9, "the mask shows an object, not all or nothing"
    assert browser.find_element("id", "image-version").text == "1"
    assert "model " in browser.find_element("id", "image-timing").text
    assert browser.find_element("id", "error").is_displayed() is False
    logs = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not logs, logs
    only_own_resources(browser, stack.url)
    keep_screenshot(browser, tmp_path, "demo.png")


def test_the_demo_page_shows_api_errors(stack, browser):
    browser.get(stack.url + "/")
    browser.find_element("id", "text-input").clear()
    browser.find_element("id", "text-submit").click()
    assert "empty_text" in visible(browser, "error").text or "invalid" in browser.find_element("id", "error").text


def test_the_api_page_renders_every_operation_offline(stack, browser, tmp_path):
    spec = json.loads((REPO_ROOT / "services" / "nginx" / "static" / "openapi.json").read_text())
    operations = [op["operationId"] for methods in spec["paths"].values() for op in methods.values()]
    browser.get(stack.url + "/api")
    visible(browser, operations[0])
    sections = browser.find_elements("css selector", "#operations > section")
    rendered = [section.get_attribute("id") for section in sections]
    assert rendered == operations
    served = requests.get(f"{stack.url}/openapi.json", timeout=5)
    assert served.json() == spec and served.headers["Content-Type"] == "application/json"
    only_own_resources(browser, stack.url)
    keep_screenshot(browser, tmp_path, "api.png")
