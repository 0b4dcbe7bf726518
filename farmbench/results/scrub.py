"""What every document passes through before the results store writes it: secrets out, plain JSON types in.

Device files and probed context may carry an SSH password or passphrase, an ADB key, an API token for a power
meter. None of that may reach the database or anything exported from it, so the store never writes a
``*_json`` column without :func:`scrub`.
"""

from __future__ import annotations

import math
import re
from pathlib import PurePath
from typing import Any

import numpy as np

REDACTED = "<redacted>"

# Substrings of a normalised key name (lower case, '-' and ' ' as '_') whose value is a secret. Substrings, so
# "ssh_password", "api_token" and "client_secret" are caught as well.
SECRET_KEY_PARTS: tuple[str, ...] = ("password", "passphrase", "secret", "token", "private_key", "key_contents")

_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
                              re.DOTALL)
# scheme://user:password@host -> scheme://user:<redacted>@host (device URLs end up in command lines and context).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^:/@\s]*):[^@/\s]*@")
# A command-line option: --name or --name=value.
_OPTION = re.compile(r"^--?(?P<name>[A-Za-z][\w-]*)(?:=(?P<value>.*))?$", re.DOTALL)


def is_secret_key(name: str) -> bool:
    normalised = name.lower().replace("-", "_").replace(" ", "_")
    return any(part in normalised for part in SECRET_KEY_PARTS)


def scrub(obj: Any) -> Any:
    """A copy of ``obj`` that is safe to store and serialise as JSON.

    * dict values under secret-looking keys (see ``SECRET_KEY_PARTS``), at any depth, become ``"<redacted>"``;
    * in strings, PEM private keys and URL passwords are redacted;
    * in lists of strings (command lines), the value of a secret-looking option (``--password X``,
      ``--token=X``) is redacted;
    * numpy scalars and arrays become Python numbers and lists, paths become strings, tuples become lists,
      non-finite floats become None (SQLite's JSON functions and most readers reject NaN).
    """
    if isinstance(obj, dict):
        return {str(k): (REDACTED if is_secret_key(str(k)) else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return _scrub_list(list(obj))
    if isinstance(obj, np.ndarray):
        return _scrub_list(obj.tolist())
    if isinstance(obj, np.generic):
        return scrub(obj.item())
    if isinstance(obj, str):
        return _scrub_text(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def _scrub_text(text: str) -> str:
    text = _PEM_PRIVATE_KEY.sub(REDACTED, text)
    return _URL_PASSWORD.sub(rf"\g<head>:{REDACTED}@", text)


def _scrub_list(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    redact_next = False
    for item in items:
        if redact_next:
            out.append(REDACTED)
            redact_next = False
            continue
        if isinstance(item, str) and (match := _OPTION.match(item)) and is_secret_key(match["name"]):
            if match["value"] is None:
                redact_next = True
                out.append(item)
            else:
                out.append(f"{item[: match.start('value')]}{REDACTED}")
            continue
        out.append(scrub(item))
    return out
