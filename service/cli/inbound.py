"""`communique inbound`: the SMTP/LMTP listener for bounces, complaints, unsubscribes and replies."""

from __future__ import annotations

import click

from service.cli.context import Context, pass_context


def register(main: click.Group) -> None:
    main.add_command(inbound)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=2525, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@click.option("--lmtp", is_flag=True, help="Speak LMTP (RFC 2033) instead of SMTP.")
@pass_context
def inbound(context: Context, host: str, port: int, lmtp: bool) -> None:
    """Receive mail for the COMMUNIQUE_BOUNCE_ADDRESS and _REPLY_ADDRESS domains; stops on SIGTERM."""
    from service.inbound.listener import run_listener  # the listener's imports only for this command
    from service.logs import configure_logging

    settings = context.settings
    configure_logging(settings)
    count = run_listener(settings, host=host, port=port, lmtp=lmtp,
                         on_started=lambda bound: click.echo(
                             f"inbound: listening on {host}:{bound}", err=True))
    click.echo(f"inbound stopped: {count} messages processed", err=True)
