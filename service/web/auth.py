"""Session sign-in for the web pages: the signed-in user, login/logout, view decorators, and
the in-memory throttle on failed logins."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from service.models import User

F = TypeVar("F", bound=Callable[..., Any])


class LoginThrottle:
    """At most `limit` failed logins per key (address or client IP) in `window_seconds`.

    In memory, per process: enough to slow a guesser on the single-process server; behind
    gunicorn each worker counts on its own, which still bounds the rate."""

    def __init__(self, limit: int = 10, window_seconds: float = 300.0) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(key, []) if now - t < self.window_seconds]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept

    def is_blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.limit for k in keys)

    def record_failure(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, now)
                self._failures.setdefault(key, []).append(now)

    def reset(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)



def current_user() -> User | None:
    from flask import g, session

    if "user" not in g:
        from service.http.context import db_session

        user_id = session.get("user_id")
        user = db_session().get(User, user_id) if isinstance(user_id, int) else None
        if user is not None and not user.is_active:
            user = None
        g.user = user
    return g.user  # type: ignore[no-any-return]


def login_user(user: User) -> None:
    from flask import g, session

    session.clear()  # a fresh session on login: no fixation
    session["user_id"] = user.id
    session.permanent = True
    g.user = user


def logout_user() -> None:
    from flask import g, session

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
