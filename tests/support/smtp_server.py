"""A real SMTP server for latchkey's tests (aiosmtpd): STARTTLS, AUTH, and scripted failures.

Each accepted message is written to MAILDIR/<n>.eml (atomically). Prints READY once listening
and runs until stdin closes or SIGTERM. With --stall-first N, the first N messages are never
answered (the client waits after its DATA): each writes MAILDIR/stalled-<n> and is not kept.

  smtp_server.py --port P --maildir D [--tls-cert C --tls-key K [--implicit-tls]] [--auth USER:PASS]
                 [--fail-first N] [--fail-code CODE] [--stall-first N]
"""
import asyncio
import argparse
import os
import signal
import ssl
import sys
import threading
import warnings

# aiosmtpd warns about its own use of Session.login_data; not ours to fix.
warnings.filterwarnings("ignore", category=DeprecationWarning)

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler:
    def __init__(self, maildir, fail_first, fail_code, stall_first):
        self.maildir = maildir
        self.fail_first = fail_first
        self.fail_code = fail_code
        self.stall_first = stall_first
        self.seen = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.seen += 1
            seen = self.seen
        if seen <= self.stall_first:
            open(os.path.join(self.maildir, f"stalled-{seen:06d}"), "w").close()
            await asyncio.sleep(3600)
        if self.fail_code and (self.fail_first < 0 or seen <= self.fail_first):
            text = "try again later" if self.fail_code.startswith("4") else "mailbox unavailable"
            return f"{self.fail_code} {self.fail_code[0]}.0.0 {text}"
        name = os.path.join(self.maildir, f"{seen:06d}.eml")
        with open(name + ".tmp", "wb") as out:
            out.write(envelope.original_content or envelope.content)
        os.rename(name + ".tmp", name)
        return "250 OK"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte, not STARTTLS")
    parser.add_argument("--auth")
    parser.add_argument("--fail-first", type=int, default=0, help="-1: always")
    parser.add_argument("--fail-code", default="")
    parser.add_argument("--stall-first", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.maildir, exist_ok=True)

    options = {}
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.implicit_tls:
            options.update(ssl_context=context)
        else:
            options.update(tls_context=context, require_starttls=True)
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticate(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user \
                and auth_data.password.decode() == password
            # handled=False: aiosmtpd answers 535 itself (its default, True, answers nothing).
            return AuthResult(success=ok, handled=False)

        options.update(authenticator=authenticate, auth_required=True, auth_require_tls=bool(args.tls_cert) and not args.implicit_tls)

    handler = Handler(args.maildir, args.fail_first, args.fail_code, args.stall_first)
    controller = Controller(handler, hostname="127.0.0.1", port=args.port, **options)
    controller.start()
    print("READY", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
