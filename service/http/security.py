"""What every response and request goes through before a door sees it: the reverse proxies we
believe (ProxyFix), security headers and the content security policy (Flask-Talisman), and the
rate-limit store shared by the API limits (Flask-Limiter) and the login throttle."""

from __future__ import annotations

import hashlib
import math
import time
from typing import TYPE_CHECKING

from flask import Flask, Response, request

from service.config import Settings
from service.http.problems import problem

if TYPE_CHECKING:
    from flask_limiter import Limiter, RequestLimit

# No inline script anywhere: app.js is the only script. Styles come from app.css only.
CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "frame-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
# Pages that show an email (or the web copy of one): its HTML carries inline styles (CSS is
# inlined for mail clients), a srcdoc frame inherits the page's policy, and it may show images
# from elsewhere. Scripts stay as strict as everywhere else.
EMAIL_CSP = {**CSP, "style-src": "'self' 'unsafe-inline'", "img-src": "'self' data: https:"}
EMAIL_ENDPOINTS = ("web.release_preview", "web.outbox_message", "public.show_release",
                   "public.unsubscribe")
REFERRER_POLICY = "same-origin"  # /u/<token> and /r/<slug> links must not leak to other sites


def init_app(app: Flask, settings: Settings) -> None:
    """Call once every blueprint is registered (the email pages get their own policy)."""
    from flask_talisman import DENY, Talisman
    from werkzeug.middleware.proxy_fix import ProxyFix

    if settings.trusted_proxies:
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops,  # type: ignore[method-assign]
                                x_host=hops)
    Talisman(app, force_https=False,  # the proxy redirects; probes on plain http keep working
             frame_options=DENY, content_security_policy=CSP,
             strict_transport_security=settings.is_https,
             session_cookie_secure=is_cookie_secure(settings),
             referrer_policy=REFERRER_POLICY)
    for endpoint in EMAIL_ENDPOINTS:
        view = app.view_functions.get(endpoint)
        if view is not None:  # Talisman's per-view options (what its decorator sets)
            setattr(view, "talisman_view_options", {"content_security_policy": EMAIL_CSP})  # noqa: B010


def is_cookie_secure(settings: Settings) -> bool:
    return settings.is_https or settings.env == "production"


def init_limiter(app: Flask, settings: Settings) -> Limiter:
    """The per-app limiter; its storage (memory, or Redis shared by every gunicorn worker) also
    holds the login throttle's counts."""
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    limiter = Limiter(get_remote_address, app=app, storage_uri=settings.rate_limit_storage_url,
                      strategy="moving-window", key_prefix="communique",
                      on_breach=_too_many_requests)
    app.extensions["communique_limiter"] = limiter
    return limiter


def api_key_identity() -> str:
    """The presented bearer token, hashed (never stored as given); the address when there is none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "key:" + hashlib.sha256(token.strip().encode()).hexdigest()[:32]
    return "address:" + str(request.remote_addr)


def _too_many_requests(limit: RequestLimit) -> Response:
    retry_after = max(1, math.ceil(limit.reset_at - time.time()))
    return problem(429, f"too many requests: at most {limit.limit}; retry in {retry_after} s",
                   headers={"Retry-After": str(retry_after)})
