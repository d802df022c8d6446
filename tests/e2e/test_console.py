"""The operator console (/console) in a real browser: headless Debian chromium driven by Playwright.

One daemon (worker and API) and one browser serve the module; each test works in an organisation of its own and a
browser context of its own. Pages are waited for by what they show (Playwright's `expect`), facts of the database
by polling; nothing sleeps. Skipped with a printed notice where Playwright or chromium is missing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web

from tests.support.api import Org, Server, make_org, module_server
from tests.support.browser import VIEWPORT, launched, require_browser, screenshot, serious_violations, sign_in
from tests.support.factories import make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import wait_db

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="module")]

XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@pytest.fixture(scope="module")
def server(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One daemon for the module; invalid webhooks are probed every second."""
    require_browser()
    workdir: Path = tmp_path_factory.mktemp("console-daemon")
    with module_server(pg_server, workdir, {"health": {"probe_interval": "1s"}}) as s:
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(server: Server) -> AsyncIterator[Any]:
    async with launched() as b:
        yield b


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any) -> AsyncIterator[Any]:
    """A page in a fresh browser context (cookies of its own); any dialog the page opens fails the test."""
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    yield page
    await context.close()
    assert not dialogs, f"the page opened dialogs: {dialogs}"


async def emit(server: Server, org: Org, type: str = "request.create", payload: str = '{"id": 1}') -> None:
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.fetchval("SELECT dispatcher_emit($1, $2, $3::jsonb)", org.id, type, payload)
    finally:
        await conn.close()


async def wait_sql(server: Server, sql: str, expected: object, *args: Any) -> None:
    conn = await asyncpg.connect(server.dsn)
    try:
        await wait_db(conn, sql, expected, *args)
    finally:
        await conn.close()


async def new_webhook(server: Server, org: Org, url: str, **fields: Any) -> int:
    conn = await asyncpg.connect(server.dsn)
    try:
        webhook_id, _ = await make_webhook(conn, url, organisation=org.id, events=["request.*"], **fields)
    finally:
        await conn.close()
    return webhook_id


@pytest.mark.timeout(90)
async def test_operator_fixes_a_gone_receiver(server: Server, page: Any) -> None:
    """Sign in; create a webhook (its secret shown once, its test makes it valid); emit an event and see it
    delivered; the receiver answers 410: the webhook shows invalid with its error and the dead letter is listed;
    the receiver is fixed, the window replayed with a progress bar up to success, and the webhook is valid again."""
    from playwright.async_api import expect

    org = await make_org(server.dsn, "console")
    answer = {"status": 200}

    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=answer["status"], text="ok" if answer["status"] == 200 else "gone for good")

    receiver = Receiver(behaviour)
    await receiver.start()
    try:
        await sign_in(page, server.url, org.admin)
        await expect(page.locator("#who")).to_contain_text(f"{org.id} · admin")

        # Create a webhook.
        await page.get_by_role("link", name="Webhooks", exact=True).click()
        await page.get_by_role("link", name="New webhook").click()
        await page.get_by_label("Name", exact=True).fill("orders")
        await page.get_by_label("URL", exact=True).fill(receiver.url)
        await page.get_by_label("request.create", exact=True).check()
        await page.get_by_role("button", name="Create webhook").click()
        await expect(page.get_by_role("heading", name="orders", exact=True)).to_be_visible()
        await expect(page.locator(".secret-value")).to_have_value(re.compile(r"^whsec_"))
        await expect(page.get_by_role("button", name="Copy")).to_be_visible()
        await expect(page.locator("#webhook-state")).to_have_text("valid", timeout=20_000)
        match = re.search(r"#/webhooks/(\d+)$", page.url)
        assert match, page.url
        webhook_id = int(match[1])

        # Emit an event and see its delivery.
        await page.get_by_role("link", name="Events", exact=True).click()
        await page.get_by_label("Type of the new event").select_option("request.create")
        await page.get_by_role("button", name="Emit").click()
        await expect(page.get_by_role("heading", name=re.compile(r"^Event "))).to_be_visible()
        await wait_sql(server, "SELECT count(*) FROM delivery WHERE webhook_id = $1 AND kind = 'original' "
                       "AND state = 'delivered'", 1, webhook_id)  # fmt: skip
        await page.reload()
        deliveries = page.locator("table.event-deliveries tbody tr")
        await expect(deliveries).to_have_count(1)
        await expect(deliveries.first).to_contain_text("delivered")

        # The receiver says 410: invalid at once, with its error.
        answer["status"] = 410
        await emit(server, org)
        await page.goto(f"{server.url}/console/#/webhooks/{webhook_id}")
        await expect(page.locator("#webhook-state")).to_have_text("invalid", timeout=20_000)
        await expect(page.locator("#last-error")).to_contain_text("410")

        # Fixed: replay the window and watch it succeed.
        answer["status"] = 200
        await page.get_by_role("link", name="Deliveries", exact=True).first.click()
        dead = page.locator("table.deliveries tbody tr", has_text="dead letter")
        await expect(dead).to_have_count(1)
        await expect(dead).to_contain_text("410")
        await page.get_by_role("button", name="Replay", exact=True).click()
        progress = page.get_by_role("progressbar", name="Replay progress")
        await expect(progress).to_be_visible()
        await expect(page.locator("#replay-status")).to_contain_text(
            "Replay completed: 1 of 1 finished (1 delivered, 0 failed", timeout=30_000
        )
        assert await progress.get_attribute("value") == await progress.get_attribute("max")
        await page.get_by_role("heading", name="Replay a window").scroll_into_view_if_needed()
        await screenshot(page, "replay")
        await page.goto(f"{server.url}/console/#/webhooks/{webhook_id}")
        await expect(page.locator("#webhook-state")).to_have_text("valid", timeout=20_000)
    finally:
        await receiver.stop()


@pytest.mark.timeout(60)
async def test_receiver_text_is_shown_inert(server: Server, page: Any) -> None:
    """A receiver's answer with <script> and <img onerror> (and a webhook named like it) is shown as text in the
    attempt log, the list and the overview: no element is made of it and nothing of it runs."""
    from playwright.async_api import expect

    org = await make_org(server.dsn, "xss")

    async def hostile(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=500, text=XSS, content_type="text/html")

    receiver = Receiver(hostile)
    await receiver.start()
    try:
        webhook_id = await new_webhook(server, org, receiver.url, name=XSS)
        await emit(server, org)
        failed = "SELECT count(*) FROM delivery WHERE webhook_id = $1 AND state = 'failed'"
        await wait_sql(server, failed, 1, webhook_id)
    finally:
        await receiver.stop()

    await sign_in(page, server.url, org.admin)
    await expect(page.locator("table.failing tbody tr")).to_have_count(1)
    await page.goto(f"{server.url}/console/#/deliveries?webhook={webhook_id}")
    row = page.locator("table.deliveries tbody tr[data-delivery]")
    await expect(row).to_have_count(1)
    await row.get_by_role("button", name="Attempts").click()
    responses = page.locator("table.attempt-log pre.response")
    await expect(responses).to_have_count(4)
    for i in range(4):
        await expect(responses.nth(i)).to_have_text(XSS)
    await page.goto(f"{server.url}/console/#/webhooks")
    await expect(page.get_by_role("link", name=XSS)).to_be_visible()
    assert await page.locator("main img, main script").count() == 0
    assert await page.evaluate("window.__pwned") is None


@pytest.mark.timeout(60)
async def test_viewer_has_no_change_controls_and_changes_need_the_csrf_token(server: Server, browser: Any) -> None:
    """A viewer's pages offer no change (no create, edit, test, pause, delete, redeliver, replay, emit, add) and the
    API refuses its changes; an admin's session cookie is HttpOnly and SameSite=Strict, and a change sent with it
    but without the CSRF token is refused (403) while the same change with the token works. The page is served
    with a Content-Security-Policy without inline script and with frame-ancestors 'none'."""
    from playwright.async_api import expect

    org = await make_org(server.dsn, "viewer")
    webhook_id = await new_webhook(server, org, "http://127.0.0.1:9/hook", name="audited")
    viewer_context = await browser.new_context(viewport=VIEWPORT)
    admin_context = await browser.new_context(viewport=VIEWPORT)
    try:
        page = await viewer_context.new_page()
        response = await page.goto(f"{server.url}/console/")
        assert response is not None
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
        await sign_in(page, server.url, org.viewer)
        await expect(page.locator("#who")).to_contain_text("viewer")

        await page.goto(f"{server.url}/console/#/webhooks/{webhook_id}")
        await expect(page.get_by_role("heading", name="audited")).to_be_visible()
        await expect(page.get_by_role("link", name="Deliveries", exact=True).last).to_be_visible()
        for name in ("Send test", "Pause", "Resume", "Deactivate", "Rotate secret", "Delete"):
            assert await page.get_by_role("button", name=name).count() == 0, name
        assert await page.get_by_role("link", name="Edit").count() == 0
        await page.goto(f"{server.url}/console/#/webhooks")
        await expect(page.get_by_role("link", name="audited")).to_be_visible()
        assert await page.get_by_role("link", name="New webhook").count() == 0
        await page.goto(f"{server.url}/console/#/deliveries?webhook={webhook_id}")
        await expect(page.get_by_role("heading", name="Deliveries")).to_be_visible()
        await expect(page.locator("table.deliveries")).to_be_visible()
        assert await page.get_by_role("button", name="Replay").count() == 0
        assert await page.get_by_role("button", name="Redeliver").count() == 0
        await page.goto(f"{server.url}/console/#/events")
        await expect(page.get_by_role("heading", name="Events")).to_be_visible()
        assert await page.get_by_role("button", name="Emit").count() == 0
        await page.goto(f"{server.url}/console/#/event-types")
        await expect(page.get_by_role("heading", name="Event types")).to_be_visible()
        assert await page.get_by_role("button", name="Add").count() == 0

        # The API refuses the viewer's change even with the CSRF token.
        csrf = (await (await page.request.get(f"{server.url}/console/session")).json())["csrf_token"]
        refused = await page.request.post(f"{server.url}/webhooks/{webhook_id}/pause", headers={"X-CSRF-Token": csrf})
        assert refused.status == 403 and (await refused.json())["error"]["code"] == "forbidden"

        # The admin's cookie, and the CSRF token.
        admin = await admin_context.new_page()
        await sign_in(admin, server.url, org.admin)
        cookies = {c["name"]: c for c in await admin_context.cookies()}
        session = cookies["dispatcher_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        assert await admin.evaluate("document.cookie") == ""
        pause = f"{server.url}/webhooks/{webhook_id}/pause"
        no_csrf = await admin.request.post(pause)
        assert no_csrf.status == 403 and (await no_csrf.json())["error"]["code"] == "csrf"
        wrong = await admin.request.post(pause, headers={"X-CSRF-Token": csrf})  # the viewer's session's token
        assert wrong.status == 403 and (await wrong.json())["error"]["code"] == "csrf"
        script = f"fetch('/webhooks/{webhook_id}/pause', {{method: 'POST'}}).then(r => r.status)"
        assert await admin.evaluate(script) == 403  # the page's own fetch, cookie and all, without the header
        token = (await (await admin.request.get(f"{server.url}/console/session")).json())["csrf_token"]
        paused = await admin.request.post(pause, headers={"X-CSRF-Token": token})
        assert paused.status == 200 and (await paused.json())["paused"] is True
    finally:
        await viewer_context.close()
        await admin_context.close()


@pytest.mark.timeout(90)
async def test_every_page_passes_axe(server: Server, page: Any) -> None:
    """axe-core finds no serious or critical violation on any page: sign-in, overview, webhooks, a webhook, the
    webhook form, deliveries with an attempt log, events with an event, event types (each saved as a screenshot when
    DISPATCHER_CONSOLE_SCREENSHOTS names a folder)."""
    from playwright.async_api import expect

    org = await make_org(server.dsn, "a11y")

    async def mostly_ok(request: web.Request, n: int) -> web.StreamResponse:
        body = await request.json()
        if body.get("data", {}).get("id", 0) % 3 == 0:
            return web.Response(status=503, text='{"error": "maintenance window"}', content_type="application/json")
        return web.Response(status=200, text='{"received": true}', content_type="application/json")

    receiver = Receiver(mostly_ok)
    await receiver.start()
    try:
        webhook_id = await new_webhook(server, org, receiver.url, name="billing")
        await new_webhook(server, org, "http://127.0.0.1:9/hook", name="crm", state="invalid")
        for i in range(1, 10):
            await emit(server, org, "request.create" if i % 2 else "request.update", f'{{"id": {i}}}')
        await wait_sql(server, "SELECT count(*) FROM delivery WHERE webhook_id = $1 AND finished_at IS NOT NULL", 9,
                       webhook_id)  # fmt: skip
    finally:
        await receiver.stop()

    found: dict[str, list[str]] = {}

    async def check(name: str) -> None:
        await screenshot(page, name)
        found[name] = await serious_violations(page)

    await page.goto(f"{server.url}/console/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await check("sign-in")
    await sign_in(page, server.url, org.admin)
    await expect(page.locator("#stat-delivered .stat-value")).to_have_text("6")
    await check("overview")
    await page.get_by_role("link", name="Webhooks", exact=True).click()
    await expect(page.get_by_role("link", name="billing")).to_be_visible()
    await check("webhooks")
    await page.get_by_role("link", name="billing").click()
    await expect(page.get_by_role("img", name=re.compile("Attempts per minute over the last 24 hours"))).to_be_visible()
    await page.get_by_role("button", name="Last hour").click()
    await expect(page.get_by_role("img", name=re.compile("Attempts per minute over the last hour"))).to_be_visible()
    await check("webhook")
    await page.goto(f"{server.url}/console/#/webhooks/new")
    await expect(page.get_by_role("heading", name="New webhook")).to_be_visible()
    await check("webhook-form")
    await page.goto(f"{server.url}/console/#/deliveries?webhook={webhook_id}&state=failed")
    await page.locator("table.deliveries tbody tr[data-delivery]").first.get_by_role("button", name="Attempts").click()
    await expect(page.locator("table.attempt-log")).to_be_visible()
    await check("deliveries")
    await page.goto(f"{server.url}/console/#/events")
    first = page.locator("table.events tbody tr a").first
    await expect(first).to_be_visible()
    await first.click()
    await expect(page.locator("table.event-deliveries")).to_be_visible()
    await check("events")
    await page.goto(f"{server.url}/console/#/event-types")
    await expect(page.get_by_role("cell", name="request.create", exact=True)).to_be_visible()
    await check("event-types")
    assert not {name: problems for name, problems in found.items() if problems}


@pytest.mark.timeout(60)
async def test_webhook_actions_and_the_catalogue(server: Server, page: Any) -> None:
    """An admin pauses and resumes a webhook, rotates its secret (shown once), edits it, deactivates it and deletes
    it after confirming (a cancelled confirmation changes nothing), and adds an event type to the catalogue; each
    step shows on the page."""
    from playwright.async_api import expect

    org = await make_org(server.dsn, "actions")
    webhook_id = await new_webhook(server, org, "http://127.0.0.1:9/hook", name="ledger")
    await sign_in(page, server.url, org.admin)
    await page.goto(f"{server.url}/console/#/webhooks/{webhook_id}")
    state = page.locator("#webhook-state")
    await expect(state).to_have_text("valid")

    await page.get_by_role("button", name="Pause").click()
    await expect(state).to_have_text("valid paused")
    await page.get_by_role("button", name="Resume").click()
    await expect(state).to_have_text("valid")

    await page.get_by_role("button", name="Rotate secret").click()
    await page.get_by_role("dialog").get_by_role("button", name="Rotate").click()
    await expect(page.get_by_role("textbox", name="The new secret")).to_have_value(re.compile(r"^whsec_"))

    await page.get_by_role("link", name="Edit").click()
    await page.get_by_label("Name", exact=True).fill("general ledger")
    await page.get_by_label("Rate limit").fill("2")
    await page.get_by_role("textbox", name="Static headers").fill("Authorization: Bearer abc")
    await page.get_by_label("Mail recipients").fill("ops@example.com")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("heading", name="general ledger")).to_be_visible()
    facts = page.locator("dl.facts").first
    await expect(facts).to_contain_text("2 per second")
    await expect(facts).to_contain_text("Authorization")
    await expect(facts).to_contain_text("ops@example.com")

    await page.get_by_role("button", name="Deactivate").click()
    await page.get_by_role("dialog").get_by_role("button", name="Deactivate").click()
    await expect(state).to_have_text("deactivated")

    await page.get_by_role("button", name="Delete").click()
    await page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    await expect(page.get_by_role("dialog")).to_have_count(0)
    await page.get_by_role("button", name="Delete").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(page.get_by_role("heading", name="Webhooks", exact=True)).to_be_visible()
    await expect(page.get_by_text("No webhooks yet.")).to_be_visible()

    await page.get_by_role("link", name="Event types", exact=True).click()
    name = f"invoice.paid{org.id[-6:]}"
    await page.get_by_label("Name", exact=True).fill(name)
    await page.get_by_label("Description").fill("An invoice was paid")
    await page.get_by_role("button", name="Add").click()
    await expect(page.get_by_role("cell", name=name, exact=True)).to_be_visible()
