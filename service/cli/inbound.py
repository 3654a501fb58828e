"""`communique inbound`: the SMTP/LMTP listener for bounces, complaints, unsubscribes and replies."""

from __future__ import annotations

import click

from service.cli.context import Context, pass_context
from service.config import Settings


def register(main: click.Group) -> None:
    main.add_command(inbound)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=2525, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@click.option("--lmtp", is_flag=True, help="Speak LMTP (RFC 2033) instead of SMTP.")
@click.option("--imap", is_flag=True,
              help="Poll the COMMUNIQUE_INBOUND_IMAP_URL mailbox instead of listening.")
@click.option("--once", is_flag=True, help="With --imap: poll once and exit (for cron).")
@pass_context
def inbound(context: Context, host: str, port: int, lmtp: bool, imap: bool, once: bool) -> None:
    """Receive mail for the COMMUNIQUE_BOUNCE_ADDRESS and _REPLY_ADDRESS domains (or, with
    --imap, from a mailbox); stops on SIGTERM."""
    from service.inbound.listener import run_listener  # the listener's imports only for this command
    from service.logs import configure_logging

    settings = context.settings
    configure_logging(settings)
    if imap:
        _poll(settings, once=once)
        return
    count = run_listener(settings, host=host, port=port, lmtp=lmtp,
                         on_started=lambda bound: click.echo(
                             f"inbound: listening on {host}:{bound}", err=True))
    click.echo(f"inbound stopped: {count} messages processed", err=True)


def _poll(settings: Settings, *, once: bool) -> None:
    import imaplib
    import signal
    import threading

    from service.inbound.imap import run_poller  # imaplib and the stage only for this command

    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    try:
        count = run_poller(settings, stop=stop, once=once)
    except (imaplib.IMAP4.error, OSError) as exc:
        raise click.ClickException(f"polling the mailbox failed: {exc}") from exc
    click.echo(f"inbound imap stopped: {count} messages processed", err=True)
