"""`communique worker`: its own module, so that starting a worker imports only what sending
needs (the delivery engine, not the contact or web stacks)."""

from __future__ import annotations

import click

from service.cli.context import Context, pass_context
from service.errors import CommuniqueError


def register(main: click.Group) -> None:
    main.add_command(worker)


@click.command()
@click.option("--until-idle", is_flag=True, help="Exit when nothing is queued, sending, deferred or due.")
@click.option("--no-scheduler", is_flag=True, help="Do not start due blasts (another process does).")
@pass_context
def worker(context: Context, until_idle: bool, no_scheduler: bool) -> None:
    """Send queued messages (and, unless --no-scheduler, start due blasts)."""
    from service.delivery.scheduler import start_scheduler
    from service.delivery.worker import run_worker
    from service.logs import configure_logging

    settings = context.settings
    configure_logging(settings)
    _require_schema(context)
    scheduler = None if no_scheduler else start_scheduler(context.session_factory, settings)
    try:
        result = run_worker(settings, until_idle=until_idle, include_due=not no_scheduler)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=True)
    click.echo(f"worker stopped: {result.attempt_count} attempts, {result.sent_count} sent", err=True)


def _require_schema(context: Context) -> None:
    """A database that answers but was never initialised: say so and stop, instead of retrying
    the first claim forever. One that does not answer yet is waited for by the worker itself."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    try:
        initialised = inspect(context.engine).has_table("queued_messages")
    except SQLAlchemyError:
        return
    if not initialised:
        raise CommuniqueError(f"the database {context.engine.url.render_as_string(hide_password=True)} "
                              "has no Communiqué tables: run `communique init` first")

