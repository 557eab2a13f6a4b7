"""What both HTTP servers (the collector, `vitals serve`, and the in-app `appvitals.serve()`)
share: bearer tokens, the JSON error body, who may bind where, and the checks that keep a
browser page from using a server on the user's machine.

One error body shape for every route of both servers: `{"error": "one line for a person"}`,
with extra fields only where a route documents them (an ingest answer that ended early also
carries its counts). Token checks take the same time whatever the token sent: each
configured token is compared, as a SHA-256 digest, with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Starlette is imported only by the servers (the watchdog reads tokens without it)
    from starlette.requests import HTTPConnection
    from starlette.responses import JSONResponse

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


class TokenError(ValueError):
    """A token that cannot be used: empty, or a token file that cannot be read."""


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None, /, **extra) -> JSONResponse:
    """The error answer of every route: `{"error": message, **extra}` with `status`."""
    from starlette.responses import JSONResponse

    text = str(message).strip().splitlines()[0] if str(message).strip() else "error"
    return JSONResponse({"error": text, **extra}, status, headers=dict(headers or {}))


def unauthorized() -> JSONResponse:
    """401 with `WWW-Authenticate: Bearer`."""
    return json_error(401, "missing or wrong token (send Authorization: Bearer TOKEN)",
                      {"WWW-Authenticate": "Bearer"})


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Tokens:
    """A set of accepted bearer tokens; empty means no token is required.

    An empty or blank token is refused (`TokenError`): `--token "$UNSET"` must not turn
    authentication off."""

    def __init__(self, tokens: Iterable[str] = ()):
        tokens = tuple(tokens)
        for token in tokens:
            if not isinstance(token, str) or not token.strip():
                raise TokenError("an empty token was given (an unset variable?): give a real token or none")
            if token != token.strip() or any(c in token for c in "\r\n"):
                raise TokenError("a token must not start or end with spaces or hold a line break")
        self._digests = tuple(_digest(t) for t in tokens)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def matches(self, given: str | None) -> bool:
        """True when `given` is one of the tokens (constant time over all of them)."""
        if not self._digests:
            return True
        if given is None:
            return False
        probe = _digest(given)
        ok = False
        for digest in self._digests:  # no early exit: the time does not tell which token matched
            ok |= hmac.compare_digest(probe, digest)
        return ok

    def allows(self, request: HTTPConnection) -> bool:
        """True when the request may pass (no tokens, or a matching bearer token)."""
        return self.matches(bearer(request))


def bearer(request: HTTPConnection) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def gather_tokens(given: Sequence[str] = (), env: str | None = None, files: Sequence[str | os.PathLike] = (),
                  environ: Mapping[str, str] | None = None) -> list[str]:
    """Tokens from the command line, an environment variable and files, in that order.

    The variable may hold several tokens separated by commas or whitespace; a file holds one
    token a line (blank lines and `#` comments skipped). Tokens given on the command line
    show in `ps`; a variable or a file does not. Raises TokenError on an empty token or an
    unreadable or empty file."""
    tokens = list(given)
    environ = os.environ if environ is None else environ
    if env and env in environ:
        value = environ[env]
        parts = value.replace(",", " ").split()
        if not parts:
            raise TokenError(f"{env} is set but empty: unset it, or give a token")
        tokens.extend(parts)
    for name in files:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenError(f"cannot read token file {name}: {exc.strerror or exc}")
        found = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
        if not found:
            raise TokenError(f"token file {name} holds no token")
        tokens.extend(found)
    Tokens(tokens)  # refuse empty ones here, with the same message
    return tokens


def is_loopback(host: str) -> bool:
    """True for localhost names and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_header_ok(request: HTTPConnection, port: int | None = None) -> bool:
    """For a server bound to loopback: True when the Host header names loopback (a name or
    an address, any port when `port` is None). A page on another site that points its own
    name at 127.0.0.1 (DNS rebinding) sends its own name here and is refused."""
    host = request.headers.get("host")
    if host is None:  # HTTP/1.0 without Host: not a browser
        return True
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        given_port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, given_port = host.partition(":")
    else:
        name, given_port = host, ""
    if not is_loopback(name):
        return False
    return port is None or not given_port or given_port == str(port)


def cross_site_browser(request: HTTPConnection, allowed_origins: Iterable[str] = ()) -> str | None:
    """Why a request comes from a web page of another site (None when it does not).

    Browsers send `Sec-Fetch-Site` and, on a POST, `Origin`; a program (the agent, curl) sends
    neither. A page on another site may POST `text/plain` without a preflight, so a server
    without tokens would take its data: refuse it unless its origin is allowed."""
    allowed = {o.rstrip("/").lower() for o in allowed_origins}
    origin = request.headers.get("origin")
    if "*" in allowed:
        return None
    if origin is not None and origin.rstrip("/").lower() in allowed:
        return None
    site = request.headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return f"cross-site request from a web page ({origin or site}) refused; allow its origin explicitly"
    if origin is not None and origin != "null":
        own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
        if origin.rstrip("/").lower() != own:
            return f"request from the web page {origin} refused; allow its origin explicitly"
    elif origin == "null":
        return "request from an opaque origin (a sandboxed page or a file) refused"
    return None
