"""Web forms (Flask-WTF: every form carries a CSRF token) and the one CSRFProtect instance.

Labels are English source strings; templates translate them with `_()`."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    DateTimeLocalField,
    EmailField,
    HiddenField,
    PasswordField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.fields.core import UnboundField
from wtforms.validators import DataRequired, Email, Length, Optional

from service.contacts.fields import FIELDS, ContactField, Kind

csrf = CSRFProtect()


def options(pairs: list[tuple[str, str]]) -> list[SelectChoice]:
    """(value, label) pairs as WTForms choices."""
    return [SelectChoice(value, label) for value, label in pairs]


LANGUAGE_CHOICES = [("fr", "Français"), ("en", "English")]
RELEASE_LANGUAGES = [("fr", "Français"), ("en", "English"), ("ar", "العربية"), ("es", "Español"),
                     ("de", "Deutsch")]


class LoginForm(FlaskForm):
    email = EmailField("Email address", validators=[DataRequired(), Email()])
    password = PasswordField("Password", validators=[DataRequired()])
    next = HiddenField()


class PreferencesForm(FlaskForm):
    language = SelectField("Language", choices=options(LANGUAGE_CHOICES))
    timezone = StringField("Time zone", validators=[Optional(), Length(max=64)])


class LanguageForm(FlaskForm):
    language = SelectField("Language", choices=options(LANGUAGE_CHOICES))
    next = HiddenField()


class UserForm(FlaskForm):
    email = EmailField("Email address", validators=[DataRequired(), Email()])
    name = StringField("Name", validators=[Optional(), Length(max=200)])
    role = SelectField("Role", choices=options(
        [("editor", "editor"), ("sender", "sender"), ("admin", "admin")]))
    password = PasswordField("Password", validators=[DataRequired(), Length(min=10)])


class ActionForm(FlaskForm):
    """A bare POST with its CSRF token (logout, pause, resume, cancel, approve...)."""


class ImportForm(FlaskForm):
    file = FileField("CSV file", validators=[FileRequired()])
    list_name = StringField("List", validators=[DataRequired(), Length(max=120)])
    dry_run = BooleanField("Check only (import nothing)")


class ContactForm(FlaskForm):
    """The contact fields people edit, one per definition in `contacts.fields` (added below)."""


def _contact_field(field: ContactField) -> UnboundField:
    """The form field of a definition: the domain validator checks and normalizes the value, so
    the form only bounds its length (the stored form: a country is its two-letter code here)."""
    if field.kind is Kind.email:
        return EmailField(field.label, validators=[DataRequired()])
    if field.kind is Kind.media_type:
        return SelectField(field.label, choices=[], validate_choice=False)  # the domain checks it
    if field.kind is Kind.tags or field.max_length is None:
        return StringField(field.label, validators=[Optional()])
    return StringField(field.label, validators=[Optional(), Length(max=field.max_length)])


CONTACT_FORM_FIELDS = tuple(field.name for field in FIELDS if field.in_form)


def _add_contact_fields() -> None:
    for field in FIELDS:
        if field.in_form:  # WTForms orders fields by creation: the definitions' order
            setattr(ContactForm, field.name, _contact_field(field))


_add_contact_fields()


class SuppressForm(FlaskForm):
    emails = TextAreaField("Addresses (one per line)", validators=[DataRequired()])
    reason = StringField("Reason", validators=[Optional(), Length(max=300)])


class ReleaseForm(FlaskForm):
    title = StringField("Title", validators=[DataRequired(), Length(max=500)])
    kicker = StringField("Kicker", validators=[Optional(), Length(max=200)])
    language = SelectField("Language", choices=options(RELEASE_LANGUAGES))
    dateline = StringField("Dateline", validators=[Optional(), Length(max=300)])
    body = TextAreaField("Body (Markdown)")
    about = TextAreaField("About", validators=[Optional()])
    embargo_until = DateTimeLocalField("Embargo until", format="%Y-%m-%dT%H:%M",
                                       validators=[Optional()])
    from_name = StringField("Sender name", validators=[Optional(), Length(max=200)])
    reply_to = StringField("Reply-To", validators=[Optional(), Length(max=320)])


class MarkdownImportForm(FlaskForm):
    file = FileField("Markdown file", validators=[FileRequired()])
    language = SelectField("Language", choices=options(RELEASE_LANGUAGES))


class VariantForm(FlaskForm):
    """A language variant of a release: a Markdown file, or the text pasted."""
    language = SelectField("Language", choices=options(RELEASE_LANGUAGES))
    file = FileField("Markdown file")
    body = TextAreaField("Or paste the translated release (Markdown)")


class AttachmentForm(FlaskForm):
    file = FileField("Attachment", validators=[FileRequired()])


class TestSendForm(FlaskForm):
    addresses = StringField("Send a test to (comma separated)", validators=[DataRequired()])
    contact_id = HiddenField()


class ScheduleForm(FlaskForm):
    lists = SelectMultipleField("Lists", choices=[], validators=[DataRequired()])
    language = StringField("Language", validators=[Optional(), Length(max=35)])
    country = StringField("Country", validators=[Optional(), Length(max=2)])
    media_type = SelectField("Media type", choices=[], validate_choice=False)  # the domain checks it
    tag = StringField("Tag", validators=[Optional(), Length(max=100)])
    send_at = DateTimeLocalField("Send at", format="%Y-%m-%dT%H:%M", validators=[Optional()])
    start_before = DateTimeLocalField("Do not start after (optional)", format="%Y-%m-%dT%H:%M",
                                      validators=[Optional()])
    stop_after = DateTimeLocalField("Stop sending after (optional)", format="%Y-%m-%dT%H:%M",
                                    validators=[Optional()])
    send_now = BooleanField("Send now")
    include_already_sent = BooleanField("Include them anyway")
    confirmed = HiddenField()
