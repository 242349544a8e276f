"""Owner-only access to the dashboard: the access token, session cookies, CSRF, headers.

- The token is 32 random bytes (urlsafe base64) in ``<home>/dashboard.token``, mode 0600,
  created on first use. It is shown once in the printed URL (``/?token=...``).
- ``GET <any page>?token=T`` sets a session cookie (``HttpOnly; SameSite=Strict``, ``Secure``
  under TLS) and redirects to the same page without the token, so it leaves the address bar
  and the history. The cookie is ``<session id>.<HMAC(token, session id)>``: stateless, so
  sessions survive a daemon restart and die with a new token.
- Every state-changing request is a POST carrying the session's CSRF token
  (``HMAC(token, "csrf:" + session id)``) in the ``X-CSRF-Token`` header, from our own origin.
- Every response carries a strict Content-Security-Policy and no-referrer; nothing is
  loaded from anywhere but this server.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
import secrets
import stat
from pathlib import Path

from edgetwin.errors import HomeError

TOKEN_FILE = "dashboard.token"  # noqa: S105 - a file name, not a secret
COOKIE = "edgetwin_session"
CSRF_HEADER = "X-CSRF-Token"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def load_or_create_token(home: Path) -> str:
    """The dashboard's access token, created (0600) on first use.

    A token file readable by others is refused (and not used): anyone who could read it
    could read the person's data through the dashboard.
    """
    path = home / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        token = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
        return token
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise HomeError(
            f"{path} is readable by others (mode {mode:04o})",
            hint=f"run 'chmod 600 {path}', or delete it to get a new token",
        )
    token = path.read_text(encoding="ascii").strip()
    if len(token) < 32:
        raise HomeError(f"{path} holds no valid token", hint="delete it to get a new one")
    return token


class Guard:
    """Checks tokens, cookies and CSRF tokens against one access token."""

    def __init__(self, token: str, *, tls: bool) -> None:
        self._key = hashlib.sha256(b"edgetwin dashboard\0" + token.encode()).digest()
        self._token = token
        self.tls = tls

    def token_ok(self, given: str) -> bool:
        """Whether ``given`` is the access token (constant time)."""
        return hmac.compare_digest(given.encode(), self._token.encode())

    def new_session_cookie(self) -> str:
        """A fresh session cookie value."""
        sid = secrets.token_urlsafe(18)
        return f"{sid}.{self._mac('session:' + sid)}"

    def session_id(self, cookie: str | None) -> str | None:
        """The session id of a valid cookie, else None."""
        if not cookie or "." not in cookie:
            return None
        sid, mac = cookie.rsplit(".", 1)
        return sid if hmac.compare_digest(mac, self._mac("session:" + sid)) else None

    def csrf_token(self, sid: str) -> str:
        """The CSRF token of a session."""
        return self._mac("csrf:" + sid)

    def csrf_ok(self, sid: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given), self.csrf_token(sid))

    def cookie_attributes(self) -> dict[str, object]:
        """aiohttp ``set_cookie`` keyword arguments."""
        return {"httponly": True, "samesite": "Strict", "secure": self.tls, "path": "/"}

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()[:43]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is loopback."""
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return False


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """``Host`` header values accepted on a loopback listener (DNS-rebinding defence);
    None when listening beyond loopback (TLS and allow_remote were required for that)."""
    if not is_loopback(host):
        return None
    return {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"{host}:{port}"}
