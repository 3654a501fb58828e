"""One thread for a worker part's database work (claims, or records), so SMTP keeps flowing on the
event loop while it waits for the database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope

T = TypeVar("T")


class DbThread:
    """Runs `fn(session)` in one transaction on its own thread and its own connection, kept open
    between transactions: the claim and record threads commit hundreds of times a second, and a
    pool checkout costs a ping (PostgreSQL) and a rollback on return each time. A failed
    connection is replaced."""

    def __init__(self, session_factory: sessionmaker[Session], name: str) -> None:
        self.session_factory = session_factory
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._connection: Any = None  # touched only on the pool's one thread

    async def run(self, fn: Callable[[Session], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._in_transaction, fn)

    def _in_transaction(self, fn: Callable[[Session], T]) -> T:
        engine = self.session_factory.kw.get("bind")
        if engine is None:
            with session_scope(self.session_factory) as session:
                return fn(session)
        connection = self._connection
        if connection is None or connection.closed or connection.invalidated:
            connection = self._connection = engine.connect()
        session = self.session_factory(bind=connection)
        try:
            result = fn(session)
            session.commit()
            return result
        except BaseException as exc:
            session.rollback()
            if isinstance(exc, SQLAlchemyError):
                self._connection = None
                connection.close()
            raise
        finally:
            session.close()

    def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def close(self) -> None:
        """Close the connection on its own thread, then end the thread."""
        self._pool.submit(self._close_connection)
        self._pool.shutdown()
