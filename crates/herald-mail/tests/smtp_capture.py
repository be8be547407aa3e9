#!/usr/bin/env python3
"""A capturing SMTP server for herald-mail's tests (needs `pip install aiosmtpd`).

usage: smtp_capture.py OUT_DIR [--starttls CERT KEY | --implicit-tls CERT KEY]
                               [--auth USER PASSWORD] [--delay SECONDS]

Listens on a free port of 127.0.0.1 and prints "PORT <n>" once it accepts
connections. Each accepted message is written to OUT_DIR as NNNNN.eml (the
bytes as received) with NNNNN.json beside it (envelope sender, recipients,
authenticated user). With --delay, each DATA answer waits that long first
(a slow provider, so a test can kill a sender mid-send). Recipients whose local part starts with "reject" get
550, those starting with "busy" get 451. Stops when stdin closes.
"""

import asyncio
import json
import os
import socket
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Capture:
    def __init__(self, out_dir, delay):
        self.out_dir = out_dir
        self.delay = delay
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject"):
            return "550 5.1.1 <%s>: Recipient address rejected: no such user" % address
        if local.startswith("busy"):
            return "451 4.3.0 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        self.count += 1
        stem = os.path.join(self.out_dir, "%05d" % self.count)
        user = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        tls = server.transport.get_extra_info("ssl_object") is not None
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "auth_user": user,
            "tls": tls,
        }
        # The .eml appears last, under its final name, so a reader that sees
        # it also sees its .json.
        with open(stem + ".json", "w") as f:
            json.dump(meta, f)
        with open(stem + ".tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(stem + ".tmp", stem + ".eml")
        return "250 2.0.0 OK queued as herald-test-%d" % self.count


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv):
    out_dir = argv[1]
    args = argv[2:]
    kwargs = {}
    tls = None
    delay = 0.0
    while args:
        flag = args.pop(0)
        if flag in ("--starttls", "--implicit-tls"):
            cert, key = args.pop(0), args.pop(0)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
            tls = (flag, ctx)
        elif flag == "--auth":
            user, password = args.pop(0).encode(), args.pop(0).encode()

            def authenticator(server, session, envelope, mechanism, auth_data):
                ok = isinstance(auth_data, LoginPassword) and (
                    auth_data.login == user and auth_data.password == password
                )
                if not ok:
                    return AuthResult(success=False, handled=False)
                return AuthResult(success=True, auth_data=auth_data)

            kwargs["authenticator"] = authenticator
            kwargs["auth_required"] = True
        elif flag == "--delay":
            delay = float(args.pop(0))
        else:
            raise SystemExit("unknown flag %s" % flag)
    if tls and tls[0] == "--starttls":
        kwargs["tls_context"] = tls[1]
        kwargs["require_starttls"] = True
    elif tls:
        kwargs["ssl_context"] = tls[1]
        kwargs["server_hostname"] = "localhost"
    else:
        # aiosmtpd refuses AUTH over plain text unless told otherwise.
        kwargs["auth_require_tls"] = False

    # Another process may take the free port between the probe and the
    # bind; try a few.
    for _ in range(5):
        port = free_port()
        controller = Controller(Capture(out_dir, delay), hostname="127.0.0.1", port=port, **kwargs)
        try:
            controller.start()
            break
        except OSError:
            continue
    else:
        raise SystemExit("could not bind a port")
    print("PORT %d" % port, flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main(sys.argv)
