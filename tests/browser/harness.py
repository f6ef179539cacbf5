"""The pieces the browser tests and the screenshot script share: a free loopback port, the
real `pgflow dashboard` command as a bounded subprocess, and a headless Chromium driver.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import attrs

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: The module the dashboard imports to know the seeded flows (resume, restart, signal).
FLOWS_MODULE = "tests.browser.flows"
#: How long the dashboard may take to answer /healthz after it was started.
START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def missing_browser() -> str | None:
    """Why headless Chromium cannot drive the dashboard here, or None when it can."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install -y {package})"
    for module, extra in (("selenium", "dev"), ("uvicorn", "dashboard"), ("jinja2", "dashboard")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed; pip install -e '.[{extra}]'"
    return None


def pgflow_command() -> list[str]:
    """The installed `pgflow` script next to this interpreter, else `python -m pgflow`."""
    script = Path(sys.executable).with_name("pgflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pgflow"]


@attrs.define
class Dashboard:
    """A running `pgflow dashboard` process and where it answers."""

    process: subprocess.Popen[bytes]
    base_url: str
    token: str
    log: Path

    def url(self, path: str) -> str:
        """`path` under the dashboard's root."""
        return f"{self.base_url}{path}"

    def host_url(self, path: str) -> str:
        """`path` on the server itself (outside the dashboard when it is mounted)."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}{path}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_dashboard(db_url: str, token: str, log: Path) -> Dashboard:
    """Start `pgflow dashboard --allow-actions` on a free port; return once /healthz answers.

    The command's output goes to `log`, quoted in the error when it does not come up.
    """
    port = free_port()
    command = [
        *pgflow_command(),
        "dashboard",
        "--url",
        db_url,
        "--port",
        str(port),
        "--allow-actions",
        "--token",
        token,
        "--import",
        FLOWS_MODULE,
    ]
    return serve(command, port, "", token, log, {})


def start_mounted(db_url: str, log: Path) -> Dashboard:
    """Serve tests/browser/mounted_app.py (the dashboard mounted at /pgflow in a host
    application) with uvicorn on a free port."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "tests.browser.mounted_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    return serve(command, port, "/pgflow", "", log, {"PGFLOW_URL": db_url})


def serve(
    command: list[str], port: int, root: str, token: str, log: Path, env: dict[str, str]
) -> Dashboard:
    """Run `command` (a server on `port`, the dashboard at `root`) until `root`/healthz
    answers; its output goes to `log`, quoted in the error when it does not come up."""
    environment = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    dashboard = Dashboard(process, f"http://127.0.0.1:{port}{root}", token, log)
    deadline = time.monotonic() + START_TIMEOUT
    while not _healthy(dashboard):
        if process.poll() is not None or time.monotonic() > deadline:
            dashboard.stop()
            raise AssertionError(
                f"{' '.join(command[:4])} ... did not come up on port {port} "
                f"(exit code {process.returncode}); its output:\n{log.read_text()}"
            )
        time.sleep(0.05)
    return dashboard


def _healthy(dashboard: Dashboard) -> bool:
    try:
        with urllib.request.urlopen(dashboard.url("/healthz"), timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def chrome(width: int = 1280, height: int = 900, javascript: bool = True) -> WebDriver:
    """Headless Chromium through the Debian chromedriver (no Selenium Manager download);
    with `javascript=False`, one that runs no script at all (as some readers browse)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    return driver
