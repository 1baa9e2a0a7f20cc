"""`slimsam web`: the file server (what it serves, what it refuses, its errors) and the page in a real headless
Chromium (Debian's chromium + chromium-driver, through Selenium) running a tiny export with transformers.js."""
from __future__ import annotations

import base64
import http.client
import io
import json
import re
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import require_or_fail_in_ci
from PIL import Image

from slimsam.cli.main import main
from slimsam.deploy import web

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
DURATION = r"(\d+ ms|\d+\.\d s)"  # how the page shows a time: 345 ms, 12.3 s


@pytest.fixture
def fake_export(tmp_path) -> Path:
    """A folder with an export's layout (the graphs are placeholders: the server never reads them)."""
    folder = tmp_path / "export"
    (folder / "onnx").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"vision_config": {"image_size": 64}}))
    (folder / "preprocessor_config.json").write_text("{}")
    for name in ("vision_encoder", "prompt_encoder_mask_decoder", "vision_encoder_quantized"):
        (folder / "onnx" / f"{name}.onnx").write_bytes(name.encode())
    return folder


@pytest.fixture
def fake_node_modules(tmp_path) -> Path:
    folder = tmp_path / "node_modules"
    for relative in web.NPM_FILES.values():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(f"// {relative}")
    return folder


def serving(server: web.PageServer):
    """Run `server` in a thread; the returned function stops it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join()
    return stop


def get(server: web.PageServer, path: str, method: str = "GET") -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    connection.request(method, path)  # sent as written: no client-side normalisation of "..", "%2e"
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


def test_server_serves_the_listed_files_with_isolation_headers_and_nothing_else(fake_export, fake_node_modules):
    server = web.make_server(fake_export, port=0, node_modules=fake_node_modules)
    stop = serving(server)
    try:
        page = get(server, "/")
        assert page.status == 200 and b'src="/page/page.js"' in page.body
        assert page.getheader("Cross-Origin-Opener-Policy") == "same-origin"
        assert page.getheader("Cross-Origin-Embedder-Policy") == "require-corp"  # wasm threads need both
        site = json.loads(get(server, "/site.json").body)
        # the int8 encoder alone is no variant: transformers.js needs both graphs of a dtype
        assert [variant["dtype"] for variant in site["variants"]] == ["fp32"] and site["image_size"] == 64
        assert site["examples"] and get(server, site["examples"][0]["url"]).body[:2] == b"\xff\xd8"  # Grace Hopper
        encoder = get(server, "/models/export/onnx/vision_encoder.onnx")
        assert encoder.body == b"vision_encoder" and encoder.getheader("Content-Type") == "application/octet-stream"
        wasm = get(server, "/ort/ort-wasm-simd-threaded.asyncify.wasm")
        assert wasm.status == 200 and wasm.getheader("Content-Type") == "application/wasm"
        assert get(server, "/page/page.js", method="HEAD").getheader("Content-Type") == "text/javascript"
        for path in ("/models/export/../config.json", "/models/export/%2e%2e/config.json", "/../../../etc/passwd",
                     "/models/export/onnx", "/page/", "/result"):
            assert get(server, path).status == 404, path
        assert get(server, "/site.json", method="POST").status == 501  # files only: nothing to post to
        assert server.requests[:2] == ["/", "/site.json"]
    finally:
        stop()


def test_not_an_export_and_missing_npm_packages_are_one_line_errors(fake_export, tmp_path, capsys, monkeypatch):
    (fake_export / "onnx" / "prompt_encoder_mask_decoder.onnx").unlink()
    for folder, message in ((tmp_path / "missing", "no folder"), (fake_export, "is not an ONNX export")):
        assert main(["web", str(folder), "--port", "0"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("slimsam: error:") and message in error
        assert "slimsam export MODEL --format onnx" in error
    (fake_export / "onnx" / "prompt_encoder_mask_decoder.onnx").write_bytes(b"graph")
    monkeypatch.setattr(web, "NODE_MODULES", tmp_path / "clients" / "js" / "node_modules")
    assert main(["web", str(fake_export), "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("slimsam: error:") and f"run `npm ci` in {tmp_path / 'clients' / 'js'}" in error


def test_a_port_in_use_is_a_one_line_error(fake_export, fake_node_modules, capsys, monkeypatch):
    monkeypatch.setattr(web, "NODE_MODULES", fake_node_modules)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["web", str(fake_export), "--port", str(port)]) == 2
    assert capsys.readouterr().err.startswith(f"slimsam: error: port {port} is in use")
    assert main(["web", str(fake_export), "--port", "70000"]) == 2
    assert "--port must be between 0 and 65535" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- in Chromium

@pytest.fixture(scope="session")  # session: checked before the session's exports are made
def transformers_js():
    require_or_fail_in_ci(web.NODE_MODULES.is_dir(), "needs transformers.js: run `npm ci` in clients/js")


@pytest.fixture
def page_server(transformers_js, tiny_onnx_export):
    server = web.make_server(tiny_onnx_export[0], port=0)
    stop = serving(server)
    yield server
    stop()


@pytest.fixture
def chromium(tmp_path):
    """Headless Chromium at 1280x800 that cannot resolve any host but 127.0.0.1, logging every request."""
    require_or_fail_in_ci(bool(CHROMIUM and CHROMEDRIVER),
                          "needs Debian chromium + chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800",
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads")})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def requested_urls(driver) -> set[str]:
    """Every URL the page (and its workers) asked for so far, from Chromium's network log."""
    messages = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    return {message["params"]["request"]["url"] for message in messages
            if message["method"] == "Network.requestWillBeSent"}


@pytest.mark.browser
def test_page_segments_in_the_browser_with_nothing_from_outside(page_server, chromium, photo_dir, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def text(element_id):
        return chromium.find_element(By.ID, element_id).text

    def page_failed():
        return "error" in chromium.find_element(By.ID, "status").get_attribute("class")

    def count(element_id):  # how many times the page has timed that model call
        return chromium.find_element(By.ID, element_id).get_attribute("data-count")

    def wait_for_new(element_id, before):
        wait.until(lambda _: count(element_id) not in (None, before) or page_failed())
        assert not page_failed(), text("status")
        return count(element_id)

    chromium.get(page_server.url)
    wait = WebDriverWait(chromium, 120)
    encoded = wait_for_new("encode-time", None)  # the model loaded and the first example is encoded
    assert "64 px input" in text("model-info") and "fp32" in text("model-info")
    examples = chromium.find_elements(By.CSS_SELECTOR, "#examples button")
    examples[-1].click()  # another example photo
    encoded = wait_for_new("encode-time", encoded)
    assert re.fullmatch(rf"{DURATION} \(\+ {DURATION} preprocessing\)", text("encode-time"))

    chromium.find_element(By.ID, "upload").send_keys(str(photo_dir / "photo_1.jpg"))  # 400x300
    encoded = wait_for_new("encode-time", encoded)
    served_before_clicks = len(page_server.requests)
    view = chromium.find_element(By.ID, "view")
    photo_alone = canvas_pixels(chromium)
    ActionChains(chromium).move_to_element(view).click().perform()  # a positive point in the middle
    decoded = wait_for_new("decode-time", None)
    assert re.fullmatch(rf"{DURATION} \(\+ {DURATION} mask upscaling\)", text("decode-time"))
    assert text("status") == "mask for 1 positive point"
    area = float(text("area").split(" %")[0])
    assert 0 < area < 100 and 0 <= float(text("score")) <= 1.5
    tinted = (np.abs(canvas_pixels(chromium) - photo_alone).sum(-1) > 30).mean()
    assert tinted > area / 100 / 2  # the mask is drawn over the photo (the point marker alone is ~0.1 %)
    chromium.save_screenshot(str(tmp_path / "click.png"))

    width, height = view.size["width"], view.size["height"]
    ActionChains(chromium).key_down(Keys.SHIFT).move_to_element_with_offset(view, width // 4, 0).click() \
        .key_up(Keys.SHIFT).perform()
    decoded = wait_for_new("decode-time", decoded)
    ActionChains(chromium).move_to_element_with_offset(view, -width // 3, -height // 3).click_and_hold() \
        .move_by_offset(width // 2, height // 2).release().perform()
    wait.until(lambda _: "box" in text("status"))
    assert text("status") == "mask for 1 positive point, 1 negative point, 1 box"
    chromium.save_screenshot(str(tmp_path / "box.png"))

    chromium.find_element(By.ID, "download").click()
    mask_file = tmp_path / "downloads" / "photo_1-mask.png"
    wait.until(lambda _: mask_file.is_file())
    mask = np.asarray(Image.open(mask_file).convert("L"))
    assert mask.shape == (300, 400) and set(np.unique(mask)) <= {0, 255} and mask.any()

    # the clicks and the download were the browser's own work: not one request to the server
    assert len(page_server.requests) == served_before_clicks

    corrupt = tmp_path / "corrupt.jpg"  # a bad upload: a message, and the photo and mask stay
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    chromium.find_element(By.ID, "upload").send_keys(str(corrupt))
    wait.until(lambda _: page_failed())
    assert text("status") == "cannot read corrupt.jpg: not an image this browser can open"
    assert text("area").endswith("% of the photo")
    urls = requested_urls(chromium)
    assert f"{page_server.url}models/export/onnx/vision_encoder.onnx" in urls
    assert f"{page_server.url}ort/ort-wasm-simd-threaded.asyncify.wasm" in urls
    assert all(url.startswith((page_server.url, "blob:", "data:")) for url in urls), sorted(urls)
    errors = [entry for entry in chromium.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


@pytest.mark.browser
def test_page_switches_to_the_int8_weights(page_server, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    chromium.get(page_server.url)
    wait = WebDriverWait(chromium, 120)
    wait.until(lambda _: chromium.find_element(By.ID, "encode-time").get_attribute("data-ms"))
    Select(chromium.find_element(By.ID, "dtype")).select_by_value("q8")
    wait.until(lambda _: "int8" in chromium.find_element(By.ID, "model-info").text
               and chromium.find_element(By.ID, "status").text == "ready: click the photo")
    chromium.find_element(By.ID, "view").click()
    wait.until(lambda _: chromium.find_element(By.ID, "decode-time").get_attribute("data-ms"))
    assert f"{page_server.url}models/export/onnx/vision_encoder_quantized.onnx" in requested_urls(chromium)


def canvas_pixels(driver) -> np.ndarray:
    """What the page's canvas shows, (H, W, 3) int."""
    data_url = driver.execute_script("return document.getElementById('view').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"), dtype=int)
