#!/usr/bin/env python3
"""A small but real SMTP server (aiosmtpd) for the demo's mail hosts.

    mailserver.py --name outmx --maildir DIR --domain example.org [--max-size BYTES]
                  [--relay-for 10.20.0.0/16 ...] [--route example.org=198.51.100.25 ...]

It accepts mail for its own domains and writes each message to DIR as an
.eml file (printing one line per delivery). With --relay-for it is a relay:
clients from those networks may send to any domain listed in --route, and
the message is passed on with smtplib, as a campus relay does; anyone else
trying to relay is refused (no open relay). --max-size is announced with the
SMTP SIZE extension (RFC 1870): a client that declares a larger message is
refused before it sends a byte of it.
"""
import argparse
import asyncio
import email
import ipaddress
import smtplib
import sys
import time
from pathlib import Path

from aiosmtpd.smtp import SMTP


class MailHandler:
    def __init__(self, name, maildir, domains, relay_for, routes):
        self.name = name
        self.maildir = Path(maildir)
        self.domains = {d.lower() for d in domains}
        self.relay_for = [ipaddress.ip_network(n) for n in relay_for]
        self.routes = {d.lower(): ip for d, ip in routes.items()}

    def _may_relay(self, peer):
        address = ipaddress.ip_address(peer[0])
        address = getattr(address, "ipv4_mapped", None) or address
        return any(address in network for network in self.relay_for)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        domain = address.rpartition("@")[2].lower()
        if domain in self.domains:
            envelope.rcpt_tos.append(address)
            return "250 OK"
        if domain in self.routes and self._may_relay(session.peer):
            envelope.rcpt_tos.append(address)
            return "250 OK, will relay"
        return "550 5.7.1 Relaying denied"

    async def handle_DATA(self, server, session, envelope):
        local = [r for r in envelope.rcpt_tos if r.rpartition("@")[2].lower() in self.domains]
        remote = [r for r in envelope.rcpt_tos if r not in local]
        message = email.message_from_bytes(envelope.content)
        if local:
            self.maildir.mkdir(parents=True, exist_ok=True)
            path = self.maildir / f"{time.time():.6f}.eml"
            path.write_bytes(envelope.content)
            print(f"{self.name}: delivered {message['Message-ID']} from {envelope.mail_from} to {', '.join(local)} "
                  f"({len(envelope.content)} bytes) {path}", flush=True)
        for domain in sorted({r.rpartition("@")[2].lower() for r in remote}):
            recipients = [r for r in remote if r.rpartition("@")[2].lower() == domain]
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, self._relay, self.routes[domain], envelope, recipients)
            except (OSError, smtplib.SMTPException) as err:
                print(f"{self.name}: relay to {domain} failed: {err}", flush=True)
                return f"451 4.4.1 relay to {domain} failed: {err}"
            print(f"{self.name}: relayed {message['Message-ID']} from {envelope.mail_from} to {', '.join(recipients)} "
                  f"via {self.routes[domain]}", flush=True)
        return "250 Message accepted for delivery"

    def _relay(self, server, envelope, recipients):
        with smtplib.SMTP(server, 25, local_hostname=self.name, timeout=30) as client:
            client.sendmail(envelope.mail_from, recipients, envelope.original_content or envelope.content)


async def serve(args):
    handler = MailHandler(args.name, args.maildir, args.domain, args.relay_for,
                          dict(r.split("=", 1) for r in args.route))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=args.name, data_size_limit=args.max_size, enable_SMTPUTF8=True),
        host=None, port=args.port,  # every address, IPv4 and IPv6
    )
    print(f"{args.name}: listening on port {args.port}, size limit {args.max_size} bytes", flush=True)
    async with server:
        await server.serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--domain", action="append", default=[], help="a domain delivered here")
    parser.add_argument("--port", type=int, default=25)
    parser.add_argument("--max-size", type=int, default=100 * 1024 * 1024)
    parser.add_argument("--relay-for", action="append", default=[], help="a network allowed to relay")
    parser.add_argument("--route", action="append", default=[], help="DOMAIN=ADDRESS of its mail server")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
