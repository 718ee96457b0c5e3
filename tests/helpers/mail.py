"""The SMTP sink the worker mails into, and what the tests read from its mails."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from bajas.dev.mailsink import MailSink, SunkMessage, start_sink
from tests.helpers import free_port

# The code line of the confirmation mail: "... es: 123456".
CODE_RE = re.compile(r"es: (\d{6})")

S = TypeVar("S", bound=MailSink)


def code_in(message: SunkMessage) -> str:
    match = CODE_RE.search(message.body)
    assert match, f"no code in mail {message.subject!r}"
    return match.group(1)


def mails_about(sink: MailSink, domain: str) -> list[SunkMessage]:
    return [m for m in sink.messages if domain in m.subject]


@dataclass
class MailServer(Generic[S]):
    sink: S
    host: str
    port: int


@contextmanager
def serving_mail(sink: S, host: str = "127.0.0.1") -> Iterator[MailServer[S]]:
    """`sink` listening on a free port for the block."""
    port = free_port()
    controller = start_sink(sink, host=host, port=port)
    try:
        yield MailServer(sink, host, port)
    finally:
        controller.stop()
