"""The `communique` command: click groups over the domain functions. Thin: parse, call, print."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from service.cli.context import Context, pass_context
from service.db import upgrade_schema
from service.errors import CommuniqueError, ConfigError

log = logging.getLogger(__name__)


# The module in service/cli/ that registers each command. Only the module a command needs is
# imported: `communique worker` does not pay for the web stack (bench/RESULTS.md).
# A module not listed here is imported eagerly, as before.
COMMAND_MODULES = {"api-keys": "api_keys", "blasts": "blasts", "worker": "worker",
                   "contacts": "contacts", "lists": "contacts", "releases": "releases", "inbound": "inbound",
                   "preview": "releases", "serve": "serve", "users": "users", "webhook": "webhook"}


def _load_commands(module: str) -> None:
    import importlib

    importlib.import_module(f"{__name__}.{module}").register(main)


class CommuniqueGroup(click.Group):
    """Loads a command's module on first use; turns our errors into a one-line message and exit
    status 1 (2 for bad settings)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            _load_commands(COMMAND_MODULES[cmd_name])
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"configuration error: {exc}", err=True)
            sys.exit(2)
        except CommuniqueError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=CommuniqueGroup)
@click.version_option(package_name="communique")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Communiqué: press-release distribution."""
    context = ctx.ensure_object(Context)
    ctx.call_on_close(context.close)


@main.command()
@pass_context
def init(context: Context) -> None:
    """Create or upgrade the database schema (safe to run again)."""
    revision = upgrade_schema(context.engine)
    click.echo(f"database ready at revision {revision}")


def register_commands() -> None:
    """Attach each domain's commands; each lives in service/cli/<domain>.py with a
    `register(main)` function, so this module stays small. Modules in COMMAND_MODULES are
    loaded when one of their commands is used; any other is loaded now."""
    import pkgutil

    lazy = set(COMMAND_MODULES.values()) | {"context"}
    for module in pkgutil.iter_modules(__path__):
        if module.name not in lazy:
            _load_commands(module.name)


register_commands()
