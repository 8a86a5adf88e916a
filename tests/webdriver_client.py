"""A minimal W3C WebDriver client (standard library only) for Debian's chromium + chromedriver, headless.

Selenium's Python package pulls in trio and websocket libraries; the few commands the browser tests
need (open a page, find, click, run a script, screenshot) are plain JSON over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class WebDriverError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One headless chromium (its own chromedriver process group); ``kill()`` ends both at once, like a crash."""

    def __init__(self, width: int = 1400, height: int = 900, timeout: float = 20.0):
        if not (CHROMIUM and CHROMEDRIVER):
            raise WebDriverError("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="fvmatch-chromium-")
        self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"
        self.timeout = timeout
        deadline = time.monotonic() + 20
        while True:
            try:
                self._call("GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    self.kill()
                    raise WebDriverError("chromedriver did not start")
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", f"--screen-info={{0,0 {width}x{height}}}", f"--user-data-dir={self.profile}", "--no-first-run",
                     "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1"]}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            raise WebDriverError(f"{method} {path}: {e.code} {e.read()[:500]!r}") from e

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    # --- what the tests use -------------------------------------------------------------------
    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def js(self, script: str, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str, timeout: float | None = None) -> str:
        """Wait until an element matching ``css`` is displayed; returns its WebDriver id."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                els = self.cmd("POST", "/elements", {"using": "css selector", "value": css})
                for el in els:
                    eid = el[ELEMENT]
                    if self.cmd("GET", f"/element/{eid}/displayed"):
                        return eid
            except WebDriverError:
                pass
            if time.monotonic() > deadline:
                raise WebDriverError(f"no visible element {css!r} after {timeout or self.timeout} s; page: "
                                     f"{(self.js('return document.body.innerText') or '')[:300]!r}")
            time.sleep(0.05)

    def click(self, css: str, timeout: float | None = None) -> None:
        """A real pointer click at the element's centre (WebDriver element click)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:  # the page may replace the element between finding and clicking it: find it again
            eid = self.find(css, timeout)
            try:
                self.cmd("POST", f"/element/{eid}/click", {})
                return
            except WebDriverError as e:
                if ("stale element" not in str(e) and "not interactable" not in str(e)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def text(self) -> str:
        return self.js("return document.body.innerText") or ""

    def screenshot(self, path: Path) -> None:
        Path(path).write_bytes(base64.b64decode(self.cmd("GET", "/screenshot")))

    def kill(self) -> None:
        """End chromedriver and chromium at once (SIGKILL to the process group): a crash, not a quit."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)

    def quit(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        except (WebDriverError, urllib.error.URLError, ConnectionError):
            pass
        self.kill()
