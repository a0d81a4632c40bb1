"""XOAUTH2 (Gmail, Microsoft 365) against a real Dovecot whose oauth2 passdb asks a local token
server: the token file's access token is used while valid, refreshed when expired or refused,
the rotated refresh token is kept; a revoked sign-in is one clear error."""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings
from ledgerflow.errors import BadInput
from ledgerflow.receipts.mail import scan
from tests.conftest import run_cli
from tests.fakes import receipts as samples
from tests.fakes.dovecot import Dovecot, TokenServer, dovecot_binary
from tests.receipts.conftest import _need, cli_env


@pytest.fixture(scope="module", params=["confidential", "public"])
def oauth_server(request) -> Iterator[tuple[Dovecot, TokenServer]]:
    """Gmail-style clients have a secret; Microsoft's public clients have none."""
    _need(dovecot_binary() is not None, "Dovecot is not installed (apt-get install dovecot-imapd)")
    tokens = TokenServer(client_secret="s3cret" if request.param == "confidential" else None)
    root = Path(tempfile.mkdtemp(prefix="lf-dovecot-oauth-"))
    root.chmod(0o755)
    server = Dovecot(root, oauth2=tokens)
    yield server, tokens
    server.stop()
    tokens.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def oauth_mailbox(oauth_server, tmp_path):
    """A mailbox with one receipt, a token file from a first sign-in, and an app that reads it."""
    dovecot, tokens = oauth_server
    user, password = dovecot.add_user()
    receipt = samples.pdf(samples.japanese_lines())
    dovecot.deliver(user, password, samples.message("領収書", [("r.pdf", receipt, "application/pdf")]))
    tokens.requests.clear()  # the server serves the whole module
    token_file = tmp_path / "imap-token.json"
    info = {
        "token_uri": f"{tokens.url}/token",
        "client_id": tokens.client_id,
        "refresh_token": tokens.grant(user),
        "scope": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
    }
    if tokens.client_secret:
        info["client_secret"] = tokens.client_secret
    token_file.write_text(json.dumps(info))
    token_file.chmod(0o600)
    return dovecot, tokens, user, token_file


def oauth_app(db_url, tmp_path, dovecot, user, token_file):
    return build_app(
        load_settings(
            database_url=db_url,
            imap_host="127.0.0.1",
            imap_port=dovecot.port,
            imap_ssl=False,
            imap_user=user,
            imap_oauth2_token_file=str(token_file),
            receipts_dir=str(tmp_path / "store"),
            log_level="WARNING",
        )
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the login does not touch the backend
def test_xoauth2_refreshes_the_token_reads_the_mailbox_and_keeps_the_rotated_refresh_token(
    db_url, tmp_path, oauth_mailbox
):
    dovecot, tokens, user, token_file = oauth_mailbox
    first_refresh = json.loads(token_file.read_text())["refresh_token"]
    app = oauth_app(db_url, tmp_path, dovecot, user, token_file)
    try:
        assert scan(app)["new_receipts"] == 1  # no access token yet: refreshed, then logged in
        (path, form), *rest = tokens.requests
        assert path == "/token" and form["refresh_token"] == first_refresh
        assert form["scope"] == "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
        assert ("client_secret" in form) == (tokens.client_secret is not None)  # public: none sent
        assert [p for p, _ in rest] == ["/introspect"]  # Dovecot asked whose token it was
        kept = json.loads(token_file.read_text())
        assert kept["refresh_token"] != first_refresh and kept["refresh_token"] in tokens.refresh  # rotated
        assert kept["access_token"] in tokens.access
        expires = datetime.fromisoformat(kept["expires_at"])
        assert timedelta(minutes=58) < expires - datetime.now(UTC) <= timedelta(seconds=3599)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

        tokens.requests.clear()
        assert scan(app)["messages"] == 0  # the stored token is still valid: no refresh
        assert [p for p, _ in tokens.requests] == ["/introspect"]

        tokens.revoke(access=True)  # the server dropped the token before its expiry
        tokens.requests.clear()
        scan(app)  # refused, refreshed once, logged in
        assert [p for p, _ in tokens.requests] == ["/introspect", "/token", "/introspect"]
    finally:
        app.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_expired_access_token_in_the_file_is_refreshed_before_login(db_url, tmp_path, oauth_mailbox):
    dovecot, tokens, user, token_file = oauth_mailbox
    info = json.loads(token_file.read_text())
    stale = {"access_token": "stale", "expires_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()}
    token_file.write_text(json.dumps({**info, **stale}))
    app = oauth_app(db_url, tmp_path, dovecot, user, token_file)
    try:
        assert scan(app)["new_receipts"] == 1
        assert [p for p, _ in tokens.requests] == ["/token", "/introspect"]  # never tried "stale"
    finally:
        app.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_revoked_sign_in_is_one_clear_error(db_url, tmp_path, oauth_mailbox, capsys, monkeypatch):
    dovecot, tokens, user, token_file = oauth_mailbox
    tokens.revoke(access=True, refresh=True)
    app = oauth_app(db_url, tmp_path, dovecot, user, token_file)
    try:
        with pytest.raises(BadInput, match="invalid_grant: Token has been expired or revoked"):
            scan(app)
        for key, value in cli_env(app).items():
            if key.startswith("LEDGERFLOW_"):
                monkeypatch.setenv(key, value)
        code, _, err = run_cli(capsys, "receipts", "scan")
        assert code == 2 and err.count("\n") == 1
        assert "LEDGERFLOW_IMAP_OAUTH2_TOKEN_FILE: the token endpoint refused the refresh token" in err
        assert "sign in again" in err
    finally:
        app.close()


def test_a_missing_or_broken_token_file_is_named(tmp_path):
    from ledgerflow.receipts.oauth import TokenFile

    with pytest.raises(BadInput, match=r"no token file at .*absent\.json"):
        TokenFile(tmp_path / "absent.json").access_token()
    (tmp_path / "t.json").write_text('{"client_id": "x"}')
    with pytest.raises(BadInput, match=r"t\.json has no refresh_token"):
        TokenFile(tmp_path / "t.json").access_token()
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(BadInput, match=r"cannot read .*t\.json as JSON"):
        TokenFile(tmp_path / "t.json").access_token()


def test_a_token_file_is_enough_for_the_mail_schedules(db_url, tmp_path):
    from ledgerflow.scheduler.standard import seed_standard_schedules

    def seeded(**mail) -> dict[str, str | None]:
        app = build_app(load_settings(database_url=db_url, log_level="WARNING", **mail))
        try:
            return {
                s.name: s.disabled_reason
                for s in seed_standard_schedules(app)
                if s.name == "email_monitoring"
            }
        finally:
            app.close()

    assert seeded(imap_host="imap.gmail.com") == {
        "email_monitoring": "needs LEDGERFLOW_IMAP_USER, LEDGERFLOW_IMAP_PASSWORD"
    }
    token = {"imap_host": "imap.gmail.com", "imap_user": "books@example.com"}
    assert seeded(**token, imap_oauth2_token_file=str(tmp_path / "t.json")) == {"email_monitoring": None}
