"""`communique users create|list|set-password|set-role|disable|enable`: web accounts (admin,
editor, sender). Changing a password or role, or disabling, ends the user's web sessions."""

from __future__ import annotations

import sys

import click

from service.accounts.users import (
    create_user,
    get_user_by_email,
    list_users,
    set_active,
    set_password,
    set_role,
)
from service.cli.context import Context, emit, json_option, pass_context
from service.db import utcnow
from service.models import Role


def register(main: click.Group) -> None:
    main.add_command(users)


@click.group("users")
def users() -> None:
    """Web interface accounts."""


@users.command("create")
@click.argument("email")
@click.option("--admin", "is_admin", is_flag=True, help="Same as --role admin.")
@click.option("--role", type=click.Choice([r.value for r in Role]), default=Role.editor.value,
              show_default=True, help="editor prepares, sender may schedule and send, admin does all.")
@click.option("--name", default=None, help="Display name.")
@click.option("--language", type=click.Choice(["fr", "en"]), default="fr", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@json_option
@pass_context
def create(context: Context, email: str, is_admin: bool, role: str, name: str | None, language: str,
           password_stdin: bool, as_json: bool) -> None:
    """Create an account; the password is asked for (twice) unless --password-stdin."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    with context.session() as session:
        user = create_user(session, email=email, password=password,
                           role=Role.admin if is_admin else Role(role), name=name, language=language,
                           now=utcnow())
        data = {"id": user.id, "email": user.email, "role": str(user.role)}
    emit(data, as_json, f"user {data['id']} {data['email']} created with role {data['role']}")


@users.command("list")
@json_option
@pass_context
def list_(context: Context, as_json: bool) -> None:
    """Every account with its role."""
    with context.session() as session:
        rows = [{"id": u.id, "email": u.email, "role": str(u.role), "active": u.is_active,
                 "last_login_at": u.last_login_at.isoformat() if u.last_login_at else None}
                for u in list_users(session)]
    emit(rows, as_json, "\n".join(f"{r['id']}\t{r['email']}\t{r['role']}" for r in rows) or "no users")


@users.command("set-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_context
def set_password_(context: Context, email: str, password_stdin: bool) -> None:
    """A new password; the user's open sessions end."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    with context.session() as session:
        set_password(session, get_user_by_email(session, email).id, password)
    click.echo(f"{email}: password changed, sessions ended")


@users.command("set-role")
@click.argument("email")
@click.argument("role", type=click.Choice([r.value for r in Role]))
@pass_context
def set_role_(context: Context, email: str, role: str) -> None:
    """A new role; the user's open sessions end."""
    with context.session() as session:
        set_role(session, get_user_by_email(session, email).id, Role(role))
    click.echo(f"{email}: role {role}")


@users.command("disable")
@click.argument("email")
@pass_context
def disable(context: Context, email: str) -> None:
    """The account can no longer sign in; its open sessions end."""
    with context.session() as session:
        set_active(session, get_user_by_email(session, email).id, False)
    click.echo(f"{email}: disabled, sessions ended")


@users.command("enable")
@click.argument("email")
@pass_context
def enable(context: Context, email: str) -> None:
    """A disabled account may sign in again."""
    with context.session() as session:
        set_active(session, get_user_by_email(session, email).id, True)
    click.echo(f"{email}: enabled")
