"""The development SMTP sink: keeps every message, in memory and optionally as .eml files."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class SunkMessage:
    received_at: datetime
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    name: str = ""

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")

    @property
    def to(self) -> str:
        return str(self.message["To"] or "")

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""


@dataclass
class MailSink:
    """aiosmtpd handler; `folder` keeps the messages across restarts of `bajas dev`."""

    folder: Path | None = None
    messages: list[SunkMessage] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            for path in sorted(self.folder.glob("*.eml")):
                self.messages.append(self._parse(path.read_bytes(), path.name, "", []))

    @staticmethod
    def _parse(raw: bytes, name: str, mail_from: str, rcpt_tos: list[str]) -> SunkMessage:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        when = msg.get("Date")
        received = when.datetime if when is not None and hasattr(when, "datetime") else None
        return SunkMessage(
            received_at=received or datetime.now(UTC),
            mail_from=mail_from or str(msg["From"] or ""),
            rcpt_tos=rcpt_tos or [str(msg["To"] or "")],
            message=msg,
            name=name,
        )

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        raw: bytes = envelope.original_content or envelope.content
        now = datetime.now(UTC)
        if "Date" not in email.message_from_bytes(raw):
            raw = f"Date: {now:%a, %d %b %Y %H:%M:%S +0000}\r\n".encode() + raw
        name = f"{now:%Y%m%dT%H%M%S%f}-{len(self.messages):05d}.eml"
        if self.folder is not None:
            (self.folder / name).write_bytes(raw)
        self.messages.append(self._parse(raw, name, envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[SunkMessage]:
        return [m for m in self.messages if any(address in r for r in m.rcpt_tos)]


def start_sink(sink: MailSink, host: str = "127.0.0.1", port: int = 1025) -> Controller:
    controller = Controller(sink, hostname=host, port=port)
    controller.start()
    return controller
