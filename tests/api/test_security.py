"""Secure by default, through real HTTP on both backends: Host allow-list (DNS rebinding),
no cross-origin writes without a bearer token, security headers everywhere, metrics token."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import TOKEN

METRICS_TOKEN = "metrics-token-for-prometheus"
EVIL = "http://evil.example"


def _paused(service) -> bool:
    return any(p.kind == "queue" and p.name == "default" for p in service.app.store.pauses())


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "", "[::2]"])
def test_a_foreign_host_header_is_refused_on_every_route(service, host):
    for path in ("/api/health", "/metrics", "/api/jobs", "/login", "/"):
        r = httpx.get(service.url + path, headers={"Host": host, "Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["code"] == "host_not_allowed"
        assert "LEDGERFLOW_ALLOWED_HOSTS" in r.json()["error"]["message"]
    r = httpx.post(
        service.url + "/api/queues/default/pause", headers={"Host": host, "Authorization": f"Bearer {TOKEN}"}
    )
    assert r.status_code == 400 and not _paused(service)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST"])
def test_loopback_names_are_allowed_by_default(service, host):
    port = service.url.rsplit(":", 1)[1]
    for value in (host, f"{host}:{port}"):
        r = httpx.get(service.url + "/api/health", headers={"Host": value})
        assert r.status_code == 200, (value, r.text)


def test_the_allowed_hosts_setting_replaces_the_default(serve_app):
    service = serve_app(allowed_hosts="ledger.example.com, *.corp.example")
    for host, status in [
        ("ledger.example.com", 200),
        ("ledger.example.com:443", 200),
        ("books.corp.example", 200),
        ("corp.example", 400),
        ("127.0.0.1", 400),
        ("ledger.example.com.evil.example", 400),
    ]:
        assert httpx.get(service.url + "/api/health", headers={"Host": host}).status_code == status, host


@pytest.mark.parametrize(
    "browser_headers",
    [
        {"Origin": EVIL},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://127.0.0.1:1"},
    ],
)
def test_a_cross_origin_form_post_without_a_bearer_token_changes_nothing(service, browser_headers):
    form = {"Content-Type": "application/x-www-form-urlencoded", **browser_headers}
    for path in (
        "/api/queues/default/pause",
        "/api/schedules/daily_export/disable",
        "/api/dlq/retry",
        "/api/exports/run",
        "/login",
        "/logout",
        "/schedules/daily_cleanup/disable",
    ):
        r = httpx.post(service.url + path, content=b"password=x&csrf=x", headers=form)
        assert r.status_code == 403, (path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "cross_origin"
    assert not _paused(service)
    assert service.app.schedules.get("daily_export").enabled
    assert service.app.store.list() == []


def test_a_same_origin_or_bearer_request_may_write(service):
    r = httpx.post(service.url + "/api/queues/default/pause", headers={"Origin": service.url})
    assert r.status_code == 401, "same origin, but still no token"
    r = service.post("/api/queues/default/pause", headers={"Origin": EVIL})
    assert r.status_code == 200 and _paused(service), "an API client with the token may come from anywhere"


def test_every_api_route_needs_the_token_and_none_is_open_by_accident(service):
    anonymous = httpx.Client(base_url=service.url)
    paths = service.client.get("/openapi.json").json()["paths"]
    routes = [(method, path) for path, operations in paths.items() for method in operations]
    assert len(routes) > 30
    for method, path in routes:
        concrete = path.replace("{job_id}", "1").replace("{receipt_id}", "1")
        concrete = concrete.replace("{name}", "daily_export").replace("{reference}", "X-1")
        r = anonymous.request(method, concrete)
        if path in ("/api/health", "/api/health/cron", "/metrics"):
            assert r.status_code in (200, 503), path
        else:
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.json()["error"]["code"] == "unauthorized"
    assert anonymous.get("/api/jobs", headers={"Authorization": "Bearer " + TOKEN[:-1]}).status_code == 401
    assert anonymous.get("/api/jobs", headers={"Authorization": "Basic " + TOKEN}).status_code == 401
    anonymous.close()


def test_every_response_carries_the_security_headers(service):
    anonymous = httpx.Client(base_url=service.url)
    responses = [
        anonymous.get("/login"),
        anonymous.get("/"),
        anonymous.get("/static/style.css"),
        anonymous.get("/api/jobs"),
        anonymous.get("/api/health"),
        anonymous.get("/metrics"),
        anonymous.get("/no-such-page"),
        anonymous.get("/api/health", headers={"Host": "evil.example"}),
        service.get("/api/jobs"),
        service.get("/api/jobs/99"),
        service.post("/api/jobs", json={"task": "nope"}),
    ]
    for r in responses:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "DENY", r.url
        assert r.headers["referrer-policy"] == "same-origin", r.url
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, r.url
    docs = service.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-security-policy"] == "frame-ancestors 'none'"
    anonymous.close()


def test_health_and_metrics_are_public_unless_a_metrics_token_is_set(serve_app):
    service = serve_app(metrics_token=METRICS_TOKEN)
    for path in ("/api/health", "/api/health/cron", "/metrics"):
        r = httpx.get(service.url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
        wrong = httpx.get(service.url + path, headers={"Authorization": "Bearer not-the-metrics-token"})
        assert wrong.status_code == 401
        for token in (METRICS_TOKEN, TOKEN):
            ok = httpx.get(service.url + path, headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code in (200, 503) and "unauthorized" not in ok.text, path
    r = httpx.get(service.url + "/api/jobs", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 401, "the metrics token opens nothing else"


def test_guessing_the_token_through_the_api_is_throttled_like_the_sign_in_form(service):
    """The API token is also the dashboard's password: wrong bearer tokens count towards the same
    throttle, and while throttled even the right token is refused (no unthrottled oracle)."""
    for _ in range(5):
        r = httpx.get(f"{service.url}/api/jobs", headers={"Authorization": "Bearer guess-guess-guess-guess"})
        assert r.status_code == 401
    for headers in (
        {"Authorization": "Bearer guess-guess-guess-guess"},
        {"Authorization": f"Bearer {TOKEN}"},
    ):
        throttled = httpx.get(f"{service.url}/api/jobs", headers=headers)
        assert throttled.status_code == 429 and throttled.json()["error"]["code"] == "too_many_attempts"
        assert 1 <= int(throttled.headers["retry-after"]) <= 60
    login = httpx.post(f"{service.url}/login", data={"password": TOKEN, "next": "/"})
    assert login.status_code == 429, "the sign-in form shares the count"
    assert httpx.get(f"{service.url}/api/health").status_code in (200, 503), "public routes stay open"


def test_wrong_passwords_on_the_sign_in_form_throttle_the_api_too(service):
    for _ in range(5):
        assert httpx.post(f"{service.url}/login", data={"password": "wrong-password"}).status_code == 401
    r = httpx.get(f"{service.url}/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 429
