"""The helpers both HTTP servers share (appvitals.httpauth): tokens, hosts, origins, errors."""

from __future__ import annotations

import json

import pytest
from starlette.requests import Request

from appvitals.httpauth import (
    TokenError,
    Tokens,
    cross_site_browser,
    gather_tokens,
    host_header_ok,
    is_loopback,
    json_error,
    unauthorized,
)


def request(**headers: str) -> Request:
    raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/v1/ingest", "headers": raw,
                    "scheme": "http", "server": ("127.0.0.1", 8420), "query_string": b""})


def test_tokens_match_any_configured_one_and_refuse_empty_ones():
    tokens = Tokens(["alpha", "beta"])
    assert tokens.matches("beta") and not tokens.matches("bet") and not tokens.matches(None)
    assert tokens.allows(request(authorization="Bearer alpha"))
    assert tokens.allows(request(authorization="bearer   alpha "))
    assert not tokens.allows(request(authorization="Basic alpha"))
    assert Tokens().allows(request()) and not Tokens()
    for bad in ([""], ["  "], [" padded"], ["two\nlines"]):
        with pytest.raises(TokenError):
            Tokens(bad)


def test_tokens_come_from_the_command_line_a_variable_and_files(tmp_path):
    (tmp_path / "t").write_text("# ingest tokens\n\nfile-1\n  file-2  \n")
    env = {"VITALS_TOKEN": "env-1, env-2"}
    assert gather_tokens(["cli"], "VITALS_TOKEN", [tmp_path / "t"], environ=env) == \
        ["cli", "env-1", "env-2", "file-1", "file-2"]
    with pytest.raises(TokenError, match="empty"):
        gather_tokens([], "VITALS_TOKEN", environ={"VITALS_TOKEN": " "})
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(TokenError, match="no token"):
        gather_tokens([], None, [tmp_path / "empty"], environ={})
    with pytest.raises(TokenError, match="cannot read"):
        gather_tokens([], None, [tmp_path / "missing"], environ={})
    with pytest.raises(TokenError):
        gather_tokens([""], None, environ={})


def test_loopback_and_host_headers():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "example.com", "localhost.example.com"))
    for host in ("127.0.0.1:9464", "localhost", "[::1]:9464", "localhost:9464"):
        assert host_header_ok(request(host=host))
    for host in ("attacker.example:9464", "127.0.0.1.nip.io", "[2001:db8::1]:9464"):
        assert not host_header_ok(request(host=host))
    assert not host_header_ok(request(host="127.0.0.1:1"), port=9464)


def test_cross_site_browser_requests():
    assert cross_site_browser(request(host="127.0.0.1:8420")) is None  # a program
    assert cross_site_browser(request(host="127.0.0.1:8420", origin="http://127.0.0.1:8420",
                                      sec_fetch_site="same-origin")) is None
    assert cross_site_browser(request(host="127.0.0.1:8420", origin="https://evil.example"))
    assert cross_site_browser(request(host="127.0.0.1:8420", sec_fetch_site="cross-site"))
    assert cross_site_browser(request(host="127.0.0.1:8420", origin="null"))
    allowed = request(host="127.0.0.1:8420", origin="https://app.example", sec_fetch_site="cross-site")
    assert cross_site_browser(allowed, ["https://app.example/"]) is None
    assert cross_site_browser(allowed, ["*"]) is None


def test_one_error_shape():
    r = json_error(400, "first line\nsecond line", {"Retry-After": "2"}, accepted=3)
    assert r.status_code == 400 and r.headers["retry-after"] == "2"
    assert json.loads(r.body) == {"error": "first line", "accepted": 3}
    assert json.loads(json_error(503, "x", status="failing").body) == {"error": "x", "status": "failing"}
    denied = unauthorized()
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
    assert set(json.loads(denied.body)) == {"error"}


def test_the_package_keeps_its_entry_points():
    from appvitals.fleet import collector
    from appvitals.fleet.collector import app, runner

    assert collector.create_app is app.create_app
    assert collector.serve is runner.serve and collector.check_bind is runner.check_bind
    with pytest.raises(ValueError, match="--insecure"):
        runner.check_bind("0.0.0.0", ("",), ("",), False)  # an unset variable is no token
