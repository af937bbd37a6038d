"""The clinic page in a real browser (headless Chromium through Selenium, on a real `edgeba serve`):
upload a real radiograph, choose the sex, read the estimate off the page; it equals the CLI's.

Chromium and its driver come from Debian (`apt-get install chromium chromium-driver`, done by .ci/run);
their absence is a failure, not a skip. Screenshots go to runs/serve/ (ignored: they show a radiograph).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import time

import pytest
from runtime_fixtures import GOOD_IDS, run_cli
from serve_fixtures import ARTIFACTS, start_server

from edgeba.dataset import rsna_root
from edgeba.manifest import DEFAULT_DIR

webdriver = pytest.importorskip("selenium.webdriver", reason="never skipped in CI: selenium is in the dev extra")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.print_page_options import PrintOptions  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

WAIT = 120  # seconds; a busy 2-core CI machine


@pytest.fixture(scope="module")
def server():
    s = start_server("--model", str(DEFAULT_DIR))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("Chromium or chromedriver is missing: apt-get install chromium chromium-driver (CI installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1600"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    # An explicit driver: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield driver
    driver.quit()


def cli_estimate(image, sex: str) -> dict:
    proc = run_cli("predict", image, "--sex", sex, "--json", "--model", DEFAULT_DIR)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait(browser, condition, message: str):
    return WebDriverWait(browser, WAIT).until(lambda d: condition(d), message)


def open_page(browser, server):
    browser.get(server.url)
    wait(browser, lambda d: d.find_element(By.ID, "model-line").text.startswith("Model edgeba"), "the page did not load /api/info")


def add_files(browser, *paths) -> list:
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
    return wait(browser, lambda d: (c := d.find_elements(By.CSS_SELECTOR, "#cases .case")) and len(c) >= len(paths) and c, "no case cards")


def field(card, name: str) -> str:
    return card.find_element(By.CSS_SELECTOR, f'[data-field="{name}"]').text


def test_upload_estimate_equals_the_cli(browser, server, downloads):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    images = [rsna_root() / "train" / f"{i}.jpg" for i in GOOD_IDS]
    open_page(browser, server)
    cards = add_files(browser, *images)
    assert [c.find_element(By.CSS_SELECTOR, ".case-title").text for c in cards] == [p.name for p in images]

    # Sex is never assumed: without it the page refuses before sending anything.
    browser.find_element(By.ID, "estimate").click()
    wait(browser, lambda d: "sex" in cards[0].find_element(By.CSS_SELECTOR, ".status").text, "no missing-sex message")
    assert "Choose the patient's sex" in cards[0].find_element(By.CSS_SELECTOR, ".status").text

    sexes = ["female", "male"]
    for card, sex in zip(cards, sexes):
        Select(card.find_element(By.CSS_SELECTOR, "select.sex")).select_by_value(sex)
    cards[0].find_element(By.NAME, "age_months").send_keys("60")
    browser.find_element(By.ID, "estimate").click()
    for card in cards:
        wait(browser, lambda d, c=card: field(c, "bone_age_months") != "", "no estimate on the page")

    for card, image, sex in zip(cards, images, sexes):
        cli = cli_estimate(image, sex)
        shown = float(field(card, "bone_age_months"))
        assert shown == round(cli["bone_age_months"], 1), (shown, cli["bone_age_months"])
        assert field(card, "bone_age") == cli["bone_age"] and field(card, "sex") == sex
        assert cli["backend"] in field(card, "engine") and cli["model"] in field(card, "engine")
        iv, shown_iv = cli.get("interval_months"), card.find_element(By.CSS_SELECTOR, ".interval")
        assert shown_iv.is_displayed() == (iv is not None)  # shown exactly when the model gives one
        if iv is not None:
            assert shown_iv.text == f"Prediction interval: {iv[0]:.1f} to {iv[1]:.1f} months"
        overlay = card.find_element(By.CSS_SELECTOR, "img.overlay")
        assert overlay.is_displayed()
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 100
    assert field(cards[0], "chronological").startswith("60.0 months")
    diff = float(field(cards[0], "difference").split()[0])
    assert diff == pytest.approx(float(field(cards[0], "bone_age_months")) - 60.0, abs=0.11)
    assert field(cards[1], "difference") == "needs the chronological age"

    rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == [p.name for p in images]
    assert all(field(c, "bone_age_months") in r.text for c, r in zip(cards, rows))
    browser.save_screenshot(str(ARTIFACTS / "page-desktop.png"))

    # CSV download: one row per image, the page's numbers.
    browser.find_element(By.ID, "download-csv").click()
    files = wait(browser, lambda d: [f for f in downloads.glob("*.csv")], "no CSV downloaded")
    table = list(csv.DictReader(io.StringIO(files[0].read_text())))
    assert [r["file"] for r in table] == [p.name for p in images]
    assert [round(float(r["bone_age_months"]), 1) for r in table] == [float(field(c, "bone_age_months")) for c in cards]

    # Whatever interval the JSON carries (`interval_months: [lo, hi]`) is shown as given, in the card and the table.
    browser.execute_script("showResult(cases[1], {...cases[1].result, interval_months: [150.24, 170.91]})")
    assert cards[1].find_element(By.CSS_SELECTOR, ".interval").text == "Prediction interval: 150.2 to 170.9 months"
    assert "[150-171]" in rows[1].text

    # Print: one A4 page per patient, no controls, each with its estimate and overlay.
    pdf = base64.b64decode(browser.print_page(a4()))
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == len(images)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        assert not browser.find_element(By.ID, "estimate").is_displayed()
        assert all(c.find_element(By.CSS_SELECTOR, "img.overlay").is_displayed() for c in cards)
        browser.save_screenshot(str(ARTIFACTS / "page-print.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})

    # A phone-sized screen: one column, nothing wider than the screen.
    browser.set_window_size(390, 844)
    try:
        time.sleep(0.5)
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        img = cards[0].find_element(By.CSS_SELECTOR, "img.overlay")
        assert img.size["width"] <= 390 and img.is_displayed()
        browser.save_screenshot(str(ARTIFACTS / "page-phone.png"))
    finally:
        browser.set_window_size(1280, 1600)


def a4() -> PrintOptions:
    opts = PrintOptions()
    opts.page_width, opts.page_height = 21.0, 29.7
    return opts


def drop_file(browser, name: str, data: bytes) -> None:
    """What a drag-and-drop from the file manager delivers to the drop zone: a drop event carrying the file."""
    browser.execute_script("""
        const [name, b64] = arguments;
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name));
        document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    """, name, base64.b64encode(data).decode())


def test_dropped_bad_file_shows_the_error(browser, server):
    open_page(browser, server)
    drop_file(browser, "notes.png", b"patient notes, not an image\n" * 20)
    card = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#cases .case"), "the dropped file made no card")[0]
    assert card.find_element(By.CSS_SELECTOR, ".case-title").text == "notes.png"
    Select(card.find_element(By.CSS_SELECTOR, "select.sex")).select_by_value("male")
    browser.find_element(By.ID, "estimate").click()
    status = wait(browser, lambda d: (s := card.find_element(By.CSS_SELECTOR, ".status")).text.startswith("notes.png") and s, "no error")
    assert "not a readable image" in status.text and "error" in status.get_attribute("class")
    assert not card.find_element(By.CSS_SELECTOR, ".result").is_displayed()


def test_dicom_prefills_sex_and_dates(browser, server, tmp_path):
    import cv2
    from test_io import write_dicom

    grey = cv2.imread(str(rsna_root() / "train" / f"{GOOD_IDS[0]}.jpg"), cv2.IMREAD_GRAYSCALE)
    dcm = write_dicom(tmp_path / "study.dcm", grey, PatientSex="F", PatientBirthDate="20190110", StudyDate="20240110")
    open_page(browser, server)
    card = add_files(browser, dcm)[0]
    sex = Select(card.find_element(By.CSS_SELECTOR, "select.sex"))
    wait(browser, lambda d: sex.first_selected_option.get_attribute("value") == "female", "sex not prefilled from the header")
    assert card.find_element(By.CSS_SELECTOR, ".from-dicom").is_displayed()
    assert card.find_element(By.NAME, "birth_date").get_attribute("value") == "2019-01-10"
    assert card.find_element(By.NAME, "study_date").get_attribute("value") == "2024-01-10"
    browser.find_element(By.ID, "estimate").click()
    wait(browser, lambda d: field(card, "bone_age_months") != "", "no estimate for the DICOM file")
    assert field(card, "chronological").startswith("60.0 months (5 y 0 m)")  # 1826 days
    cli = cli_estimate(dcm, "female")
    assert float(field(card, "bone_age_months")) == round(cli["bone_age_months"], 1)
