"""How farmbench reaches a device: one small :class:`Transport` interface, implemented for the host
(:mod:`.local`) and SSH boards (:mod:`.ssh`).

The SSH transport is imported from its own module (``from farmbench.transports.ssh import SshTransport``) so that
commands which never touch a board do not pay for importing paramiko (about 0.2 s).
"""

from farmbench.transports.base import Completed, Transport
from farmbench.transports.local import LocalTransport
from farmbench.transports.quoting import join, quote

__all__ = ["Completed", "LocalTransport", "Transport", "join", "quote"]
