"""The app as users and CI meet it: `python app.py --left A --right B`, called through gradio_client and
driven in a real headless Chromium (Debian's chromium + chromium-driver, through Selenium)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import save_tiny_model
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

ROOT = Path(__file__).parents[2]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """`python app.py` on two tiny local models, on a free port, until the module's tests are done: (url, log)."""
    folder = tmp_path_factory.mktemp("served_models")
    left, right = save_tiny_model(folder / "tiny_left", seed=0), save_tiny_model(folder / "tiny_right", seed=1)
    port = free_port()
    log = open(folder / "server.log", "w")
    server = subprocess.Popen([sys.executable, "app.py", "--left", str(left), "--right", str(right), "--port", str(port),
                               "--session-ttl", "4"],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"app.py exited: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        yield url, folder / "server.log"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        server_log = (folder / "server.log").read_text()
        assert "Traceback" not in server_log, server_log[-3000:]  # bad input must never crash a handler


@pytest.fixture(scope="module")
def app_url(app_server):
    return app_server[0]


def releases(log: Path) -> int:
    return log.read_text().count("released a session's photo")


def test_segment_endpoint_returns_two_masks_and_a_report(app_server, photo_dir):
    app_url, server_log = app_server
    released = releases(server_log)
    client = Client(app_url, verbose=False)
    assert "/segment" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    left, right, report = client.predict(handle_file(str(photo_dir / "photo_0.jpg")), "[[250, 300, 1], [40, 60, 0]]",
                                         "", True, api_name="/segment")
    assert Path(left).is_file() and Path(right).is_file()
    assert report["image"]["width"] == 512 and report["image"]["height"] == 600
    for side in ("left", "right"):
        assert report[side]["error"] is None and len(report[side]["scores"]) == 3
        assert report[side]["mask_area"] > 0 and report[side]["decode_seconds"] > 0
        assert "local" in report[side]["model"]
    assert 0 <= report["iou_between_panes"] <= 1
    deadline = time.time() + 30  # the server runs with --session-ttl 4: the API session's memory goes soon
    while releases(server_log) == released and time.time() < deadline:
        time.sleep(0.5)
    assert releases(server_log) > released


def test_bad_input_through_the_api_gives_messages(app_url, photo_dir, tmp_path):
    client = Client(app_url, verbose=False)
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(AppError, match="Cannot read broken.png"):
        client.predict(handle_file(str(corrupt)), "[[5, 5, 1]]", "", True, api_name="/segment")
    notes = tmp_path / "notes.txt"  # a file of another type: a message naming it, no traceback on the server
    notes.write_text("not a photo")
    with pytest.raises(AppError, match="Cannot read notes.txt") as info:
        client.predict(handle_file(str(notes)), "[[5, 5, 1]]", "", True, api_name="/segment")
    assert "/" not in str(info.value)  # the file's name, never the server's temp path
    photo = handle_file(str(photo_dir / "photo_0.jpg"))
    for points, multimask, message in (("[[5000, 5, 1]]", True, "outside the 512x600 image"),
                                       ("[[5, 5, true]]", True, "label is the integer"),
                                       ("[[5, 5, 1]]", "banana", "multimask must be true or false"),
                                       (json.dumps([[5, 5, 1]] * 20_000), True, "at most 64 points")):
        with pytest.raises(AppError, match=message):
            client.predict(photo, points, "", multimask, api_name="/segment")


def test_concurrent_clients_get_their_own_results(app_url, photo_dir):
    """Six users at once, different photos and prompts: each gets what it would get alone."""
    jobs = {f"{name}{copy}": job for copy in range(3)
            for name, job in (("a", (photo_dir / "photo_0.jpg", "[[250, 300, 1]]")),
                              ("b", (photo_dir / "photo_1.jpg", "[[30, 40, 1], [200, 150, 0]]")))}

    def report(name):
        path, points = jobs[name]
        return Client(app_url, verbose=False).predict(handle_file(str(path)), points, "", False,
                                                      api_name="/segment")[2]
    alone = {name: report(name) for name in jobs}
    together = {}
    threads = [threading.Thread(target=lambda name=name: together.update({name: report(name)})) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in jobs:
        for side in ("left", "right"):
            assert together[name][side]["mask_area"] == alone[name][side]["mask_area"]
            assert together[name][side]["scores"] == alone[name][side]["scores"]
        assert together[name]["image"] == alone[name]["image"]


@pytest.fixture
def browser():
    """Headless Chromium with a 1280x800 window (a 1280x657 page: the window's own bars take the rest)."""
    if not (CHROMIUM and CHROMEDRIVER):
        message = "needs Debian chromium + chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {message}")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


IN_VIEW = """
const element = arguments[0], box = element.getBoundingClientRect();
const inside = box.width > 0 && box.height > 0 && box.top >= 0 && box.left >= 0
    && box.bottom <= window.innerHeight && box.right <= window.innerWidth;
const top = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
return inside && (top === element || element.contains(top));
"""
# Fraction of an <img>'s pixels that differ from another picture's (by more than JPEG noise): has a mask appeared?
CHANGED = """
function pixels(src) {
  return new Promise((resolve) => { const image = new Image(); image.onload = () => {
    const canvas = document.createElement('canvas'); canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
    const context = canvas.getContext('2d'); context.drawImage(image, 0, 0);
    resolve(context.getImageData(0, 0, canvas.width, canvas.height).data); }; image.src = src; });
}
const [before, after, done] = arguments;
Promise.all([pixels(before), pixels(after)]).then(([a, b]) => {
  if (a.length !== b.length) { done(1); return; }
  let changed = 0;
  for (let i = 0; i < a.length; i += 4) {
    if (Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1]) + Math.abs(a[i + 2] - b[i + 2]) > 60) changed++;
  }
  done(changed / (a.length / 4));
});
"""


@pytest.mark.browser
def test_browser_a_click_on_a_pane_shows_both_masks_in_view_at_1280x800(app_server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def pane_texts():
        return [browser.find_element(By.ID, f"{side}-text").text for side in ("left", "right")]

    def pictures():
        return [browser.find_element(By.CSS_SELECTOR, f"#{side}-overlay img") for side in ("left", "right")]

    app_url, server_log = app_server
    browser.get(app_url)
    wait = WebDriverWait(browser, 90)
    wait.until(lambda _: "Models available here" in browser.find_element(By.TAG_NAME, "body").text)
    assert "Models available here" in browser.find_element(By.ID, "status").text
    corrupt = tmp_path / "corrupt.jpg"  # a damaged upload first: a message in the page, and the app carries on
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#upload input[type=file], input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(corrupt))
    wait.until(lambda _: "Cannot read corrupt.jpg" in browser.find_element(By.ID, "status").text)
    time.sleep(11)  # a toast would have faded by now: the status line keeps the message until the next action
    assert "Cannot read corrupt.jpg" in browser.find_element(By.ID, "status").text
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#examples button.thumbnail-item"))
    browser.find_elements(By.CSS_SELECTOR, "#examples button.thumbnail-item")[0].click()
    wait.until(lambda _: all("encode" in text for text in pane_texts()))  # both panes encoded the example
    assert "Cannot read" not in browser.find_element(By.ID, "status").text
    wait.until(lambda _: all(picture.get_attribute("src") for picture in pictures()))
    plain = [picture.get_attribute("src") for picture in pictures()]
    ActionChains(browser).move_to_element(pictures()[1]).click().perform()  # the middle of the right pane
    wait.until(lambda _: all("decode" in text for text in pane_texts()))
    wait.until(lambda _: all(picture.get_attribute("src") not in plain for picture in pictures()))
    browser.save_screenshot(str(tmp_path / "app.png"))
    assert browser.execute_script("return window.scrollY") == 0
    for side, text, picture, before in zip(("left", "right"), pane_texts(), pictures(), plain):
        assert "predicted IoU" in text and "area" in text and "M parameters" in text and "decode" in text, text
        assert picture.size["width"] > 250 and browser.execute_script(IN_VIEW, picture), side
        for element in (browser.find_element(By.ID, f"{side}-text"), browser.find_element(By.ID, f"{side}-model")):
            assert browser.execute_script(IN_VIEW, element), (side, element.text)
        changed = browser.execute_async_script(CHANGED, before, picture.get_attribute("src"))
        assert changed > 0.01, f"no mask to see in the {side} pane"  # tiny random models paint large masks
    assert "local" in browser.find_element(By.CSS_SELECTOR, "#left-model input").get_attribute("value")
    assert "1 positive" in browser.find_element(By.ID, "status").text
    assert "Agreement" in browser.find_element(By.ID, "agreement").text
    released = server_log.read_text().count("released a session's photo")
    browser.get("about:blank")  # the tab goes: its session's memory is released at once (Gradio's unload event)
    wait.until(lambda _: server_log.read_text().count("released a session's photo") > released)
