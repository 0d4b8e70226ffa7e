"""The dashboard is not open to anyone (issue #19): with a token, every page and API route
needs the bearer token or the login page's HttpOnly session cookie; every response carries
Content-Security-Policy and X-Frame-Options; the CLI refuses a non-loopback host without a
token. Real app over an empty SQLite warehouse (FastAPI's TestClient)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from mm_platform.config import load_config
from mm_platform.dashboard.app import COOKIE, create_app
from mm_platform.dashboard.cli import is_loopback
from mm_platform_tests.conftest import write_config

TOKEN = "s3cret-token"
PROTECTED = ["/", "/series", "/promotions", "/api/overview", "/api/series", "/series/list"]


@pytest.fixture
def cfg(tmp_path):
    return load_config(write_config(tmp_path))


def _headers_present(response) -> None:
    csp = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, response.url
    assert response.headers.get("x-frame-options") == "DENY", response.url


def test_without_the_token_every_route_is_refused(cfg):
    with TestClient(create_app(cfg, token=TOKEN), follow_redirects=False) as client:
        for url in PROTECTED:
            r = client.get(url)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", url
            _headers_present(r)
            assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401, url
            assert client.get(url, cookies={COOKIE: TOKEN}).status_code == 401, url  # the cookie is not the token
        # A browser is sent to the login page, which keeps where it was going.
        r = client.get("/series?q=a", headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fseries%3Fq%3Da"
        for url in ["/healthz", "/login", "/static/app.css"]:
            r = client.get(url)
            assert r.status_code == 200, url
            _headers_present(r)


def test_the_bearer_token_or_the_login_cookie_opens_the_pages(cfg):
    with TestClient(create_app(cfg, token=TOKEN), follow_redirects=False) as client:
        for url in PROTECTED:
            assert client.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, url
        bad = client.post("/login", data={"token": "nope", "next": "/promotions"})
        assert bad.status_code == 401 and "not valid" in bad.text and COOKIE not in bad.cookies
        r = client.post("/login", data={"token": TOKEN, "next": "/promotions"})
        assert r.status_code == 303 and r.headers["location"] == "/promotions"
        cookie = r.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and TOKEN not in cookie
        for url in PROTECTED:  # the client keeps the cookie, as a browser does
            r = client.get(url)
            assert r.status_code == 200, url
            _headers_present(r)
        # The login form redirects only within the site.
        r = client.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert r.headers["location"] == "/"
        client.get("/logout")
        assert client.get("/").status_code == 401


def test_without_a_token_loopback_stays_open_and_has_the_headers(cfg, monkeypatch):
    monkeypatch.delenv("MM_API_TOKEN", raising=False)
    with TestClient(create_app(cfg)) as client:
        r = client.get("/")
        assert r.status_code == 200
        _headers_present(r)
    monkeypatch.setenv("MM_API_TOKEN", TOKEN)  # the scoring service's option applies here too
    with TestClient(create_app(cfg)) as client:
        assert client.get("/api/overview").status_code == 401


def test_cli_refuses_a_non_loopback_host_without_a_token(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    env = {k: v for k, v in os.environ.items() if k not in ("MM_API_TOKEN", "MM_CONFIG")}
    env["MM_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-m", "mm_platform.cli", "dashboard", "--host", "0.0.0.0",
                          "--config", str(write_config(tmp_path))], env=env, capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert "0.0.0.0" in lines[0] and "MM_API_TOKEN" in lines[0]
