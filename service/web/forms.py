"""Web forms (Flask-WTF: every form carries a CSRF token) and the one CSRFProtect instance.

Labels are English source strings; templates translate them with `_()`."""

from __future__ import annotations

import re
from typing import Any

from email_validator import EmailNotValidError, validate_email
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    DateTimeLocalField,
    EmailField,
    FieldList,
    Form,
    FormField,
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
from service.web.i18n import _

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


PRESS_CONTACT_KEYS = ("organisation", "name", "phone", "email")
PRESS_CONTACT_ROWS = 20  # as many as the CMS webhook accepts
BAD_CONTACT_EMAIL = "Press contact %(row)s, email: this is not a valid address."
BAD_CONTACT_PHONE = "Press contact %(row)s, phone: use only digits, spaces and + ( ) . - /"
_PHONE = re.compile(r"\+?[0-9 ().\-/]{6,40}")


class PressContactForm(Form):
    """One row of the press contacts: empty rows are ignored (plain Form: the release form's CSRF
    token covers it)."""
    organisation = StringField("Organisation or role", validators=[Optional(), Length(max=200)])
    name = StringField("Name", validators=[Optional(), Length(max=200)])
    phone = StringField("Phone", validators=[Optional(), Length(max=40)])
    email = StringField("Email address", validators=[Optional(), Length(max=320)])


class ReleaseForm(FlaskForm):
    title = StringField("Title", validators=[DataRequired(), Length(max=500)])
    kicker = StringField("Kicker", validators=[Optional(), Length(max=200)])
    language = SelectField("Language", choices=options(RELEASE_LANGUAGES))
    dateline = StringField("Dateline", validators=[Optional(), Length(max=300)])
    highlights = TextAreaField("Highlights (one per line)", validators=[Optional()])
    body = TextAreaField("Body (Markdown)")
    about = TextAreaField("About", validators=[Optional()])
    press_contacts = FieldList(FormField(PressContactForm), min_entries=3,
                               max_entries=PRESS_CONTACT_ROWS)
    embargo_until = DateTimeLocalField("Embargo until", format="%Y-%m-%dT%H:%M",
                                       validators=[Optional()])
    from_name = StringField("Sender name", validators=[Optional(), Length(max=200)])
    reply_to = StringField("Reply-To", validators=[Optional(), Length(max=320)])

    def validate(self, extra_validators: Any = None) -> bool:
        """The fields, then each press contact's email and phone, the error naming its row."""
        valid = super().validate(extra_validators)
        for number, row in enumerate(self.press_contacts, start=1):
            email, phone = row.form.email, row.form.phone
            if (email.data or "").strip() and not _is_address(email.data.strip()):
                email.errors = [*email.errors, _(BAD_CONTACT_EMAIL, row=number)]
                valid = False
            if (phone.data or "").strip() and not _PHONE.fullmatch(phone.data.strip()):
                phone.errors = [*phone.errors, _(BAD_CONTACT_PHONE, row=number)]
                valid = False
        return valid

    def highlight_lines(self) -> list[str]:
        return [line.strip() for line in (self.highlights.data or "").splitlines() if line.strip()]

    def contact_rows(self) -> list[dict[str, str | None]]:
        """The filled rows as the release stores them (empty rows left out)."""
        rows = [{key: (row.form[key].data or "").strip() or None for key in PRESS_CONTACT_KEYS}
                for row in self.press_contacts]
        return [row for row in rows if any(row.values())]


def _is_address(text: str) -> bool:
    try:
        validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


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
    attach_pdf = BooleanField("Attach the release as a PDF")
    track = BooleanField("Record opens and clicks")
    confirmed = HiddenField()
