"""Logging hygiene: keys sent in URLs (`?api_key=`, which browsers' WebSockets must use) never
reach the server's logs."""
from __future__ import annotations

import logging
import re

_SECRET = re.compile(r"((?:api_key|access_token|key)=)[^&\s\"']+", re.IGNORECASE)


class RedactSecrets(logging.Filter):
    """Rewrites `api_key=…` in a record's message and arguments to `api_key=***`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _SECRET.sub(r"\1***", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_SECRET.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_secrets(*names: str) -> None:
    """Install the filter on the named loggers (uvicorn's access and error logs), once each."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
