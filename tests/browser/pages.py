"""Small steps the browser tests repeat: open a page, sign in, click an action, await a change.

Everything that waits does so through WebDriverWait (condition polled, bounded), never a
fixed sleep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

T = TypeVar("T")

#: Seconds a page, an action's redirect or a live update may take.
WAIT = 10.0
#: How late the shown job counts may be: the dashboard reuses them for 5 s, serves the old
#: value once more while it recounts, and pages poll every 2 s (so about 12 s), plus slack.
COUNTS_LAG = 20.0


def css(driver: WebDriver, selector: str) -> WebElement:
    """The element `selector` matches, awaited (NoSuchElement-like timeout naming it)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        element: WebElement = WebDriverWait(driver, WAIT).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, selector))
        )
    except TimeoutException:
        page = driver.execute_script("return document.body ? document.body.innerText : ''")
        raise AssertionError(
            f"no element matches {selector!r} on {driver.current_url}; "
            f"the page says: {str(page)[:500]!r}"
        ) from None
    return element


def all_css(driver: WebDriver, selector: str) -> list[WebElement]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def await_true(
    driver: WebDriver, check: Callable[[WebDriver], T], what: str, timeout: float = WAIT
) -> T:
    """`check(driver)`'s first truthy value, polled for up to `timeout` seconds."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # Stale or missing: the page is being replaced (navigation, or a live fragment swapped).
    ignored = (NoSuchElementException, StaleElementReferenceException)
    value: T = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(
        check, f"gave up waiting for {what} on {driver.current_url}"
    )
    return value


def open_page(driver: WebDriver, url: str, ready: str = "body") -> None:
    """Load `url` and wait for the element `ready` to be there."""
    driver.get(url)
    css(driver, ready)


def log_in(driver: WebDriver, login_url: str, token: str) -> None:
    """Sign in through the login form; return once the redirect to the overview landed."""
    open_page(driver, login_url, "input[name=token]")
    field = css(driver, "input[name=token]")
    field.clear()
    field.send_keys(token)
    css(driver, "#login-submit").click()
    root = login_url.rsplit("/login", 1)[0] + "/"
    await_true(driver, lambda d: d.current_url == root, "the login to redirect to the overview")


def act(
    driver: WebDriver,
    page_url: str,
    action: str,
    fields: dict[str, str] | None = None,
    lands_on: str | None = None,
) -> str:
    """On `page_url`, fill the action's form fields, click its button, await the redirect
    back to the page (or to `lands_on`, a path prefix, when the action leads elsewhere);
    return the path it landed on.

    The page is marked first, so the wait ends only on a new page (the 303 back to it).
    """
    open_page(driver, page_url, f"button[data-action='{action}']")
    button = css(driver, f"button[data-action='{action}']")
    form = button.find_element("xpath", "./ancestor::form")
    for name, value in (fields or {}).items():
        field = form.find_element("css selector", f"[name='{name}']")
        if field.tag_name == "select":
            from selenium.webdriver.support.select import Select

            Select(field).select_by_value(value)
        else:
            field.clear()
            field.send_keys(value)
    driver.execute_script("window.__beforeAction = true")
    question = button.get_attribute("data-confirm")
    button.click()
    if question:
        answer_confirm(driver, question)
    await_true(
        driver,
        lambda d: (
            d.execute_script("return window.__beforeAction === undefined")
            and d.execute_script("return document.readyState") == "complete"
        ),
        f"the {action!r} action to load a new page",
    )
    landed = urlsplit(driver.current_url).path
    expected = lands_on or urlsplit(page_url).path
    assert landed == expected or (lands_on is not None and landed.startswith(lands_on)), (
        f"the {action!r} action landed on {driver.current_url}, not on {expected}; "
        f"the page says: {css(driver, 'body').text[:500]!r}"
    )
    assert all_css(driver, ".flash"), f"no message after the {action!r} action"
    return landed


def answer_confirm(driver: WebDriver, question: str, accept: bool = True) -> None:
    """Await the page's confirm() dialog asking `question`, and accept (or dismiss) it."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    alert = WebDriverWait(driver, WAIT).until(
        expected_conditions.alert_is_present(), f"no dialog asking {question!r}"
    )
    assert alert.text == question
    if accept:
        alert.accept()
    else:
        alert.dismiss()


def pwned(driver: WebDriver) -> Any:
    """What injected markup would have set (None: nothing ran)."""
    return driver.execute_script("return window.__pwned === undefined ? null : window.__pwned")
