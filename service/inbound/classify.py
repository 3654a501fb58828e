"""What a message that came back is: a bounce (flufl.bounce, GNU Mailman's detectors), an RFC 5965
complaint, an unsubscribe by mail, an RFC 3834 auto-reply, a human reply, or not understood."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.utils import parseaddr

from flufl.bounce import all_failures

from service.models import InboundKind

TEXT_MAX_CHARS = 100_000
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE = re.compile(r"\b([245]\d\d)\b")
# Subjects of out-of-office and other automatic answers that carry no RFC 3834 header
# (Outlook, Gmail vacation, Zimbra ... in the languages of the press offices we serve).
_AUTO_SUBJECT = re.compile(
    r"^\s*(automatic reply|auto[- ]?reply|autoreply|out of (the )?office|absent|absence|"
    r"réponse automatique|reponse automatique|message d'absence|abwesenheit|automatische antwort|"
    r"respuesta automática|risposta automatica|رد تلقائي|خارج المكتب)", re.IGNORECASE)
_AUTO_HEADERS = ("x-autoreply", "x-autorespond", "x-auto-response-suppress-none")
_UNSUBSCRIBE_SUBJECT = re.compile(r"^\s*(unsubscribe|désinscription|desinscription)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Classification:
    kind: InboundKind
    from_address: str | None = None
    subject: str | None = None
    text: str | None = None
    dsn_status: str | None = None  # "5.1.1"
    smtp_code: int | None = None
    diagnostic: str | None = None
    failed_recipients: tuple[str, ...] = field(default=())  # as the bounce reports them


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def classify_message(raw: bytes) -> Classification:
    """Classify one message; anything that fails to parse is `not_understood`, never an error."""
    try:
        message = parse(raw)
        return _classify(message)
    except (ValueError, LookupError, TypeError, AttributeError, IndexError, UnicodeError):
        return Classification(InboundKind.not_understood)


def _classify(message: EmailMessage) -> Classification:
    from_address = parseaddr(str(message.get("From", "")))[1] or None
    subject = _header(message, "Subject")
    if _is_feedback_report(message):
        return Classification(InboundKind.complaint, from_address, subject,
                              _text(message), diagnostic=_feedback_type(message))
    temporary, permanent = all_failures(_compat(message))
    if permanent or temporary:
        status, smtp_code, diagnostic = _dsn_details(message)
        kind = InboundKind.hard_bounce if permanent else InboundKind.soft_bounce
        if status is not None and kind == InboundKind.hard_bounce and status.startswith("4."):
            kind = InboundKind.soft_bounce  # the DSN's own status beats a detector's guess
        recipients = tuple(sorted(r.decode("utf-8", "replace") for r in (permanent or temporary)))
        return Classification(kind, from_address, subject, None, status, smtp_code, diagnostic,
                              recipients)
    if message.get_content_type() == "multipart/report":
        return Classification(InboundKind.not_understood, from_address, subject)  # a report we cannot read
    if _is_auto_reply(message, subject):
        return Classification(InboundKind.auto_reply, from_address, subject, _text(message))
    if subject is not None and _UNSUBSCRIBE_SUBJECT.match(subject):
        return Classification(InboundKind.unsubscribe, from_address, subject)
    text = _text(message)
    if from_address is None or not (text or subject):
        return Classification(InboundKind.not_understood, from_address, subject, text)
    return Classification(InboundKind.reply, from_address, subject, text)


def _compat(message: EmailMessage) -> Message:
    """flufl.bounce reads messages as the compat32 policy gives them (string headers, get_payload)."""
    return email.message_from_bytes(message.as_bytes(policy=email.policy.compat32))


def _header(message: EmailMessage, name: str) -> str | None:
    value = message.get(name)
    return " ".join(str(value).split()) if value is not None else None


def _is_feedback_report(message: EmailMessage) -> bool:
    """RFC 5965: multipart/report; report-type=feedback-report with a message/feedback-report part."""
    return (message.get_content_type() == "multipart/report"
            and str(message.get_param("report-type") or "").lower() == "feedback-report")


def _feedback_type(message: EmailMessage) -> str | None:
    for part in message.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            first = payload[0] if isinstance(payload, list) and payload else payload
            body = first.as_string() if isinstance(first, Message) else str(first)
            match = re.search(r"(?im)^feedback-type:\s*(\S+)", body)
            return f"feedback-type: {match.group(1).lower()}" if match else None
    return None


def _is_auto_reply(message: EmailMessage, subject: str | None) -> bool:
    auto_submitted = (message.get("Auto-Submitted") or "no").strip().lower()
    if not auto_submitted.startswith("no"):  # RFC 3834 §5
        return True
    if (message.get("Precedence") or "").strip().lower() in ("auto_reply", "bulk", "junk"):
        return True
    if any(name in message for name in _AUTO_HEADERS):
        return True
    if (message.get("X-Auto-Response-Suppress") or "").strip() and subject and _AUTO_SUBJECT.match(subject):
        return True
    return bool(subject and _AUTO_SUBJECT.match(subject))


def _dsn_details(message: EmailMessage) -> tuple[str | None, int | None, str | None]:
    """RFC 3464 Status and Diagnostic-Code of the first failed recipient; else the first
    enhanced status code and SMTP reply found in the text of a non-standard bounce."""
    for part in message.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            fields = _delivery_status_fields(part)
            status = next((value for name, value in fields if name == "status"), None)
            diagnostic = next((value for name, value in fields if name == "diagnostic-code"), None)
            code_match = _SMTP_CODE.search(diagnostic or "")
            status_match = _STATUS.search(status or "")
            return (status_match.group(0) if status_match else None,
                    int(code_match.group(1)) if code_match else None, diagnostic)
    text = _text(message) or ""
    status_match = _STATUS.search(text)
    code_match = _SMTP_CODE.search(text)
    marker = status_match or code_match
    line = next((line.strip() for line in text.splitlines()
                 if marker and marker.group(0) in line), None)
    return (status_match.group(0) if status_match else None,
            int(code_match.group(1)) if code_match else None, line[:1000] if line else None)


def _delivery_status_fields(part: Message) -> list[tuple[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = [block.items() for block in payload if isinstance(block, Message)]
        return [(name.lower(), " ".join(str(value).split())) for items in blocks[1:] or blocks
                for name, value in items]
    body = payload if isinstance(payload, str) else ""
    return [(name.lower(), value.strip())
            for name, value in re.findall(r"(?m)^([A-Za-z-]+):\s*(.*)$", body)]


def _text(message: EmailMessage) -> str | None:
    """The first text/plain part (the text of an HTML-only message when there is none)."""
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return None
    try:
        content = part.get_content()
    except (LookupError, ValueError, UnicodeError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(content, str):
        return None
    if part.get_content_type() == "text/html":
        content = re.sub(r"<[^>]+>", " ", content)
    return content.replace("\r\n", "\n").strip()[:TEXT_MAX_CHARS] or None
