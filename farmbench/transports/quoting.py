"""The one place where arguments become a remote shell command line.

Everything else in farmbench builds argv lists and calls :func:`join`; nothing formats a command string by hand.
The result is meant for a POSIX shell (``sh``, ``bash``, ``dash``, busybox ``ash``): that is what sshd hands the
command to on every board we target. Each argument comes out single-quoted unless it is made of characters that
no POSIX shell treats specially, so ``;``, ``$(...)``, backticks, quotes and newlines arrive as literal text.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence


def quote(arg: str) -> str:
    """``arg`` as one word of a POSIX shell command line (``shlex.quote`` semantics: ``''`` for the empty string)."""
    if not isinstance(arg, str):
        raise TypeError(f"shell arguments must be str, not {type(arg).__name__}: {arg!r}")
    # A NUL byte cannot be passed through exec(): the shell would silently cut the argument there.
    if "\0" in arg:
        raise ValueError(f"shell argument contains a NUL byte: {arg!r}")
    return shlex.quote(arg)


def join(argv: Sequence[str]) -> str:
    """A command line that a POSIX shell splits back into exactly ``argv``."""
    # A str is a Sequence[str] too; "ls -l" would otherwise become the four words 'l' 's' ' ' ... .
    if isinstance(argv, (str, bytes)):
        raise TypeError(f"argv must be a list of arguments, not a single string: {argv!r}")
    if not argv:
        raise ValueError("argv is empty: there is no command to run")
    return " ".join(quote(arg) for arg in argv)
