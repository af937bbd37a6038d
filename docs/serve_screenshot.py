"""Re-make docs/serve.png, the README's picture of the clinic page, from a *synthetic* hand drawing (no
patient image may be committed): `python docs/serve_screenshot.py` (needs [serve], selenium, chromium).

The drawing is a cartoon that only passes the U-Net's hand gate; its "bone age" means nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

OUT = Path(__file__).parent / "serve.png"


def synthetic_hand(seed: int = 0) -> np.ndarray:
    """A grey cartoon of a left hand: palm, five fingers with phalanges, carpals, radius and ulna."""
    h, w = 1000, 800
    soft, bone = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    cv2.ellipse(soft, (400, 600), (190, 210), 0, 0, 360, 1, -1)
    cv2.rectangle(soft, (300, 700), (520, 1000), 1, -1)
    fingers = [((250, 520), (120, 250), 35), ((330, 420), (300, 130), 32), ((410, 400), (410, 90), 32),
               ((490, 420), (520, 130), 30), ((560, 520), (650, 300), 28)]
    for (x0, y0), (x1, y1), r in fingers:
        cv2.line(soft, (x0, y0), (x1, y1), 1, 2 * r)
        cv2.circle(soft, (x1, y1), r, 1, -1)
        for t0, t1 in ((0.0, 0.45), (0.5, 0.8), (0.84, 1.0)):
            a = (int(x0 + (x1 - x0) * t0), int(y0 + (y1 - y0) * t0))
            b = (int(x0 + (x1 - x0) * t1), int(y0 + (y1 - y0) * t1))
            cv2.line(bone, a, b, 1, int(r * 0.9))
        cv2.line(bone, (x0, y0), (400 + (x0 - 400) // 3, 720), 1, int(r * 0.8))
    for cx, cy in ((340, 760), (390, 750), (440, 760), (365, 800), (420, 805)):
        cv2.circle(bone, (cx, cy), 22, 1, -1)
    cv2.rectangle(bone, (320, 840), (390, 1000), 1, -1)
    cv2.rectangle(bone, (420, 850), (480, 1000), 1, -1)
    img = 25 + 90 * cv2.GaussianBlur(soft, (0, 0), 4) + 110 * cv2.GaussianBlur(bone * soft, (0, 0), 2.5)
    img += np.random.default_rng(seed).normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    image = folder / "synthetic-hand.png"
    cv2.imwrite(str(image), synthetic_hand())
    server = subprocess.Popen([sys.executable, "-m", "edgeba.cli", "serve", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = next(line for line in server.stdout if " open http://" in line).split(" open ")[1].split()[0]
        opts = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--window-size=1100,1250", "--hide-scrollbars"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        try:
            driver.get(url)
            driver.find_element(By.ID, "files").send_keys(str(image))
            card = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#cases .case"))
            Select(card.find_element(By.CSS_SELECTOR, "select.sex")).select_by_value("female")
            card.find_element(By.NAME, "birth_date").send_keys("03022012")  # mm/dd/yyyy in the en-US headless locale
            card.find_element(By.NAME, "study_date").send_keys("12012025")
            driver.find_element(By.ID, "estimate").click()
            WebDriverWait(driver, 60).until(lambda d: card.find_element(By.CSS_SELECTOR, ".overlay").get_attribute("src"))
            driver.save_screenshot(str(OUT))
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(folder)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
