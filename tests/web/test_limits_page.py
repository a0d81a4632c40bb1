"""The Queues page: an operator sets and clears global limits in a real browser."""

from __future__ import annotations

import httpx

from tests.web.test_dashboard import SHOTS, TOKEN, browser, dashboard

__all__ = ["browser", "dashboard"]


def _limits(url: str) -> dict[tuple[str, str], dict]:
    rows = httpx.get(f"{url}/api/limits", headers={"Authorization": f"Bearer {TOKEN}"}).json()["limits"]
    return {(r["kind"], r["name"]): r for r in rows}


def test_operator_sets_and_clears_limits_on_the_queues_page(dashboard, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{dashboard}/login")
    page.fill("#password", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{dashboard}/")
    page.click("header >> text=Queues")
    row = page.locator("#queue-default")
    row.locator("input[name=concurrency]").fill("2")
    row.locator("input[name=rate]").fill("30/minute")
    row.get_by_role("button", name="Set limit").click()
    page.wait_for_url("**/queues?flash=*")
    assert (
        "queue default: at most 2 running and at most 30/minute starts"
        in page.get_by_role("status").inner_text()
    )
    assert page.locator("#queue-default td").nth(4).inner_text() == "2"
    assert page.locator("#queue-default td").nth(5).inner_text() == "30/minute"
    assert _limits(dashboard)[("queue", "default")]["concurrency"] == 2

    task = page.locator('[id="task-ledgerflow.cleanup"]')
    task.locator("input[name=rate]").fill("often")
    task.get_by_role("button", name="Set limit").click()
    page.wait_for_url("**/queues?flash=*")
    assert "rate limit 'often' is not N/period" in page.get_by_role("status").inner_text()
    assert ("task", "ledgerflow.cleanup") not in _limits(dashboard), "a refused limit stored nothing"
    task = page.locator('[id="task-ledgerflow.cleanup"]')
    task.locator("input[name=concurrency]").fill("1")
    task.get_by_role("button", name="Set limit").click()
    page.wait_for_url("**/queues?flash=*")
    assert _limits(dashboard)[("task", "ledgerflow.cleanup")]["set_by"] == "user"
    page.screenshot(path=str(SHOTS / "queues-limits.png"), full_page=True)

    page.locator("#queue-default").get_by_role("button", name="Clear").click()
    page.wait_for_url("**/queues?flash=*")
    assert "queue default: limits cleared" in page.get_by_role("status").inner_text()
    assert page.locator("#queue-default td").nth(4).inner_text() == "—"
    assert set(_limits(dashboard)) == {("task", "ledgerflow.cleanup")}


def test_limit_actions_need_the_csrf_token(dashboard):
    client = httpx.Client(base_url=dashboard)
    assert client.post("/limits/queue/default/set", data={"csrf": "x", "concurrency": "1"}).status_code == 403
    login = client.post("/login", data={"password": TOKEN, "next": "/"})
    session = {"ledgerflow_session": login.cookies["ledgerflow_session"]}
    forged = client.post(
        "/limits/queue/default/set", data={"csrf": "forged", "concurrency": "1"}, cookies=session
    )
    assert forged.status_code == 403
    assert _limits(dashboard) == {}
