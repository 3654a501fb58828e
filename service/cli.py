"""The `communique` command: click groups over the domain functions. Thin: parse, call, print."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import click
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings
from .db import make_engine, make_session_factory, session_scope, upgrade_schema
from .errors import CommuniqueError, ConfigError

log = logging.getLogger(__name__)


@dataclass
class Context:
    """Built once per invocation; settings are read from the environment on first use."""

    overrides: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def settings(self) -> Settings:
        return Settings.from_env()

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url)

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.session_factory) as session:
            yield session


pass_context = click.make_pass_decorator(Context)


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print JSON on stdout for scripts, or a human sentence."""
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, default=str))
    elif text is not None:
        click.echo(text)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


# The module in service/commands/ that registers each command. Only the module a command needs is
# imported: `communique worker` does not pay for the web stack (about 0.9 s of every start).
# A module not listed here is imported eagerly, as before.
COMMAND_MODULES = {"api-keys": "api_keys", "blasts": "blasts", "worker": "worker",
                   "contacts": "contacts", "lists": "contacts", "releases": "releases",
                   "preview": "releases", "serve": "serve", "users": "users", "webhook": "webhook"}


def _load_commands(module: str) -> None:
    import importlib

    importlib.import_module(f"{__package__}.commands.{module}").register(main)


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
    """Attach each domain's commands; each lives in service/commands/<domain>.py with a
    `register(main)` function, so this module stays small. Modules in COMMAND_MODULES are
    loaded when one of their commands is used; any other is loaded now."""
    import pkgutil

    from . import commands

    lazy = set(COMMAND_MODULES.values())
    for module in pkgutil.iter_modules(commands.__path__):
        if module.name not in lazy:
            _load_commands(module.name)


register_commands()
