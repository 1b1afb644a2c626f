"""The explorer's page in a real headless Chromium (Debian's chromium and chromedriver,
driven by Selenium; `make test` installs them) against `dae serve` with denoisers and a VAE
fitted for seconds on real MNIST, so the screenshots are the README's: they are saved in
the test's folder, and DAE_UPDATE_SCREENSHOTS=1 also writes them to docs/explorer/."""

from __future__ import annotations

import os
import shutil
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from explorer_support import running_explorer
from support import Server, copy_version

pytestmark = pytest.mark.slow  # fits three models on MNIST, starts a browser: ~1 min

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
DOCS = Path(__file__).resolve().parents[3] / "docs" / "explorer"
README_SHOTS = ("denoise.png", "latent.png")  # one of each view
LATENCY_BUDGET_MS = 150.0
# A pushed version folder (a default run's dae-root/serving/denoiser/N) served as version 2,
# for the README's screenshots: DAE_UPDATE_SCREENSHOTS=1 DAE_SHOWN_MODEL=... pytest ...
SHOWN_MODEL = os.environ.get("DAE_SHOWN_MODEL")


def _mnist_version(base: Path, family: str, clean: np.ndarray, epochs: int, **fixed) -> None:
    """A denoiser of `family` fitted on gaussian-noised MNIST, pushed as push does."""
    import keras

    from dae.components import models, vae
    from dae.serving.format import export

    keras.utils.set_random_seed(0)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.3, clean.shape), 0, 1)
    hp = models.hyperparameters()
    for name, value in {"learning_rate": 3e-3, **fixed}.items():  # good digits in seconds
        hp.Fixed(name, value)
    trainer = models.build_model(hp, family, clean.shape[1:], clean.mean(), clean.std())
    trainer.fit(noisy.astype(np.float32), clean, epochs=epochs, batch_size=64, verbose=0)
    model = models.deployable(trainer)
    export.push(model, base, vae_parts=vae.parts(model))


@pytest.fixture(scope="module")
def mnist_servers(tmp_path_factory):
    """Two `dae serve`s: "denoiser" with two dense versions (1: smaller, fitted one epoch;
    2: as the screenshots show it), and "vae" with a VAE. One server cannot hold both:
    its versions must keep the same signatures."""
    from dae.serving.explorer import examples

    found, _ = examples.load("tfds:mnist/train", 6000, Path("~/tensorflow_datasets"))
    if found is None:
        pytest.fail("MNIST is not prepared: run `make data` (dae data prepare mnist)")
    clean = found.images.astype(np.float32) / 255
    root = tmp_path_factory.mktemp("explorer-mnist")
    _mnist_version(root / "denoiser", "dense", clean, 1, units_0=128, latent_dim=16)
    if SHOWN_MODEL:  # the model a user would see: a default run's push
        copy_version(Path(SHOWN_MODEL), root / "denoiser", 2)
    else:
        _mnist_version(root / "denoiser", "dense", clean, 3, units_0=256, latent_dim=64)
    _mnist_version(root / "vae", "vae", clean, 3, units_0=512)  # latent_dim 8: eight sliders
    with ThreadPoolExecutor(2) as pool:  # each loads TensorFlow: start them together
        dense = pool.submit(Server, root / "denoiser", "--num-versions", "2")
        vae = pool.submit(Server, root / "vae", name="vae")
        servers = dense.result(), vae.result()
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} missing: `make test` installs them, or "
            "apt-get install chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)  # never Selenium Manager: it would download
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


class Page:
    """The page as the test sees it: elements by id, canvases' pixels, waits, screenshots."""

    def __init__(self, driver, shots: Path):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.shots = driver, shots
        self.wait = WebDriverWait(driver, 30, poll_frequency=0.01)

    def __call__(self, element_id: str):
        return self.driver.find_element("id", element_id)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def pixels(self, canvas: str) -> str:
        return self.js(f"return document.getElementById('{canvas}').toDataURL()")

    def until(self, condition, what: str):
        from selenium.common.exceptions import TimeoutException

        try:
            return self.wait.until(lambda _: condition())
        except TimeoutException:
            shown = self.js("return document.body.innerText")[:1500]
            message = f"timed out waiting for {what}; the page shows:\n{shown}"
            raise AssertionError(message) from None

    def text_in(self, element_id: str, text: str) -> str:
        self.until(lambda: text in self(element_id).text, f"'{text}' in #{element_id}")
        return self(element_id).text

    def changed(self, canvas: str, before: str) -> None:
        self.until(lambda: self.pixels(canvas) != before, f"#{canvas} to change")

    def script_errors(self) -> list[str]:
        """What scripts logged as errors (failed requests are the network's, and expected)."""
        logs = self.driver.get_log("browser")
        return [e["message"] for e in logs if e["source"] != "network" and e["level"] == "SEVERE"]

    def shot(self, name: str) -> Path:
        """The page's content as PNG in the test's folder; the README's also in docs/."""
        path = self.shots / name
        self.js("document.activeElement.blur()")  # no text cursor in the picture
        self.driver.find_element("tag name", "body").screenshot(str(path))
        if name in README_SHOTS and os.environ.get("DAE_UPDATE_SCREENSHOTS") == "1":
            DOCS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS / name)
        return path


def _explorer(server: Server):
    return running_explorer(
        "--server",
        server.rest.removeprefix("http://"),
        "--model-name",
        server.name,
        "--examples",
        "tfds:mnist/test",
        "--num-examples",
        "400",
    )


def test_denoise_playground(mnist_servers, browser, tmp_path, capsys):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    with _explorer(mnist_servers[0]) as url:
        page = Page(browser, tmp_path)
        browser.get(url)
        page.text_in("model-line", "versions 2 available, 1 available")
        page.text_in("source-line", "test image #")

        # Draw a stroke: the drawing is the clean image, denoised as it grows.
        page("clear").click()
        before = page.pixels("denoised-a")
        ActionChains(browser).move_to_element_with_offset(
            page("draw"), -60, -80
        ).click_and_hold().move_by_offset(110, 0).move_by_offset(-60, 170).release().perform()
        page.text_in("source-line", "your drawing")
        page.changed("denoised-a", before)
        page.text_in("metrics-a", "PSNR")

        # Each slider step: event -> request -> denoised canvas drawn, timed by the page.
        slider, latencies = page("level"), []
        for key in [Keys.ARROW_RIGHT] * 6 + [Keys.ARROW_LEFT] * 6:
            count, before = page.js("return dae.latencies.length"), page.pixels("denoised-a")
            slider.send_keys(key)
            page.until(lambda n=count: page.js("return dae.latencies.length") > n, "an update")
            latencies.append(page.js("return dae.latencies[dae.latencies.length - 1]"))
            assert page.pixels("denoised-a") != before
        median = statistics.median(latencies)
        with capsys.disabled():
            print(
                f"\nexplorer: slider -> denoised image {median:.0f} ms median, "
                f"{max(latencies):.0f} ms max over {len(latencies)} moves"
            )
        assert median < LATENCY_BUDGET_MS, latencies
        page.shot("denoise-drawing.png")

        # A test image and two versions side by side: the README's picture of this view.
        Select(page("version-b")).select_by_value("1")
        index = page("example-index")
        index.clear()
        index.send_keys("3", Keys.ENTER)
        page.text_in("source-line", "test image #3 of 400, label ")
        page.text_in("label-b", "denoised, version 1")
        page.text_in("metrics-b", "PSNR")
        page.shot("denoise.png")

        # An upload that is not an image: a message, and the input stays as it was.
        notes = tmp_path / "notes.txt"
        notes.write_text("not a picture\n")
        page("upload").send_keys(str(notes))
        message = page.text_in("input-message", "not an image")
        assert message.startswith("notes.txt: the upload is not an image")
        page.shot("upload-error.png")

        # This model has no latent space: said on the page, not a blank.
        page("tab-latent").click()
        page.text_in("latent-message", "has no 'encode' and 'decode' signatures")
        assert not page("scatter").is_displayed()
        page.shot("latent-no-decode.png")
        assert page.script_errors() == []


def test_latent_explorer(mnist_servers, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    server = mnist_servers[1]
    with _explorer(server) as url:
        page = Page(browser, tmp_path)
        browser.get(url)
        page("tab-latent").click()
        page.text_in("latent-line", "400 test images encoded; 8-D codes")
        page.until(
            lambda: page.js("return document.getElementById('morph').width") > 28 * 11,
            "the morph strip",
        )

        # Click a point of the scatter, drag across it, move a slider: each decodes.
        scatter, before = page("scatter"), page.pixels("decoded")
        ActionChains(browser).move_to_element_with_offset(scatter, 40, -30).click().perform()
        page.text_in("decoded-line", "ms")
        page.changed("decoded", before)
        before = page.pixels("decoded")
        ActionChains(browser).move_to_element_with_offset(
            scatter, -100, 60
        ).click_and_hold().move_by_offset(30, 10).move_by_offset(30, 10).move_by_offset(
            30, 10
        ).release().perform()
        page.changed("decoded", before)
        assert page.js("return dae.latent.z.length") == 8
        before = page.pixels("decoded")
        page.driver.find_elements("css selector", "#sliders input")[0].send_keys(Keys.END)
        page.text_in("decoded-line", "z1 = ")
        page.changed("decoded", before)
        ActionChains(browser).move_to_element_with_offset(scatter, 60, -40).click().perform()
        page.text_in("decoded-line", "ms")
        page.shot("latent.png")

        # The model server goes down: the page says so.
        server.stop()
        browser.refresh()
        page.text_in("message", f"the model server at {server.rest[7:]} is not reachable")
        page.shot("server-down.png")
        assert page.script_errors() == []
