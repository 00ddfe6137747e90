"""Where e-mails go: an SMTP server (STARTTLS, TLS or plain on loopback) or .eml files."""

from __future__ import annotations

import os
import smtplib
import ssl
import tempfile
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol


class Mailer(Protocol):
    """Sends one message; raises on failure (PermanentFailure when retrying cannot help)."""

    def send(self, message: EmailMessage) -> None:
        """Hands the message over, or raises."""


class PermanentFailure(Exception):
    """The server refused the message for good (a 5xx answer): retrying cannot help."""


class SmtpMailer:
    """Sends over SMTP: STARTTLS after connecting, TLS from the start, or plain ("none")."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: str,
        user: str = "",
        password: str = "",
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Creates the mailer; no connection is made until `send`."""
        self.host, self.port, self.security = host, port, security
        self.user, self.password, self.timeout = user, password, timeout
        self.ssl_context = ssl_context or ssl.create_default_context()

    def send(self, message: EmailMessage) -> None:
        """Sends the message in a connection of its own."""
        try:
            with self._connect() as smtp:
                if self.security == "starttls":
                    smtp.starttls(context=self.ssl_context)
                if self.user:
                    smtp.login(self.user, self.password)
                smtp.send_message(message)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
            raise PermanentFailure(str(exc)) from exc
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500:
                raise PermanentFailure(f"{exc.smtp_code} {exc.smtp_error!r}") from exc
            raise

    def _connect(self) -> smtplib.SMTP:
        if self.security == "tls":
            return smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=self.ssl_context
            )
        return smtplib.SMTP(self.host, self.port, timeout=self.timeout)


class FileMailer:
    """Writes each message as an .eml file (development: read them without a mail server)."""

    def __init__(self, directory: Path) -> None:
        """Creates the mailer; the directory is made on first use."""
        self.directory = directory

    def send(self, message: EmailMessage) -> None:
        """Writes <directory>/<message id>.eml, whole or not at all."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = str(message["Message-ID"]).strip("<>").split("@", 1)[0]
        fd, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as file:
            file.write(message.as_bytes())
        os.replace(temporary, self.directory / f"{name}.eml")
