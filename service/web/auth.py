"""Session sign-in for the web pages: the signed-in user, login/logout, view decorators, and
the throttle on failed logins."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from limits import RateLimitItemPerSecond
from limits.storage import Storage
from limits.strategies import MovingWindowRateLimiter

from service.accounts.users import end_sessions
from service.models import User

F = TypeVar("F", bound=Callable[..., Any])


class LoginThrottle:
    """At most `limit` failed logins per key in `window_seconds` (a moving window).

    The counts live in the rate-limit store (memory, or Redis shared by every gunicorn worker).
    Keys are hashed: no address is stored as typed."""

    def __init__(self, storage: Storage, name: str, limit: int, window_seconds: int = 300) -> None:
        self.name = name
        self._item = RateLimitItemPerSecond(limit, window_seconds)
        self._limiter = MovingWindowRateLimiter(storage)

    def _id(self, key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def is_blocked(self, *keys: str) -> bool:
        return any(not self._limiter.test(self._item, self.name, self._id(k)) for k in keys)

    def record_failure(self, *keys: str) -> None:
        for key in keys:
            self._limiter.hit(self._item, self.name, self._id(key))

    def reset(self, *keys: str) -> None:
        for key in keys:
            self._limiter.clear(self._item, self.name, self._id(key))


def current_user() -> User | None:
    """The signed-in user, or None. The cookie names the user and the session version it was
    issued for: a logout, password, role or active change raised the version and ends it. Idle
    sessions end with the cookie's signed age (PERMANENT_SESSION_LIFETIME, refreshed each request)."""
    from flask import g, session

    if "user" not in g:
        from service.http.context import db_session

        user_id, version = session.get("user_id"), session.get("session_version")
        user = db_session().get(User, user_id) if isinstance(user_id, int) else None
        if user is not None and (not user.is_active or version != user.session_version):
            user = None
            session.clear()
        g.user = user
    return g.user  # type: ignore[no-any-return]


def login_user(user: User) -> None:
    from flask import g, session

    session.clear()  # a fresh session on login: no fixation
    session["user_id"] = user.id
    session["session_version"] = user.session_version
    session.permanent = True
    g.user = user


def logout_user() -> None:
    """Ends the user's sessions server-side (every device: the version is per user), not only
    this cookie, so a copied cookie is worthless after logout."""
    from flask import g, session

    from service.http.context import db_session

    user = current_user()
    if user is not None:
        end_sessions(user)
        db_session().commit()
    session.clear()
    g.pop("user", None)


def login_required(view: F) -> F:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        from flask import redirect, request, url_for

        if current_user() is None:
            return redirect(url_for("web.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def role_required(check: Callable[[User], bool]) -> Callable[[F], F]:
    """Anonymous -> login page; signed in without the right -> 403."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            from flask import abort, redirect, request, url_for

            user = current_user()
            if user is None:
                return redirect(url_for("web.login", next=request.full_path.rstrip("?")))
            if not check(user):
                abort(403)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator
