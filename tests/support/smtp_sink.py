"""A real SMTP server for hookd's notification tests (aiosmtpd).

    python3 tests/support/smtp_sink.py PORT DIR [USER PASSWORD]

Listens on 127.0.0.1:PORT and writes every message it accepts to DIR as
`<n>.eml` (the raw message, CRLF line ends) beside `<n>.json` (the
envelope: sender, recipients, and the user that authenticated, if any).
Each `.json` is renamed into place last, so a reader that sees it sees a
complete message. With USER and PASSWORD it offers AUTH PLAIN and LOGIN
(without TLS: loopback only) and refuses other credentials.

Prints `ready` on stdout once it accepts connections; runs until killed.
"""

import asyncio
import itertools
import json
import os
import sys
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.counter = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        base = os.path.join(self.directory, f"{n:05d}")
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "user": session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None,
        }
        with open(base + ".tmp", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".tmp", base + ".json")
        return "250 OK message accepted"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    return check


def main():
    # aiosmtpd warns about AUTH without TLS; this sink is loopback only.
    warnings.filterwarnings("ignore")
    port = int(sys.argv[1])
    directory = sys.argv[2]
    kwargs = {}
    if len(sys.argv) >= 5:
        kwargs = {
            "authenticator": authenticator(sys.argv[3], sys.argv[4]),
            "auth_require_tls": False,
            "auth_required": True,
        }
    controller = Controller(Sink(directory), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.new_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
