#!/usr/bin/env python3
"""Send one message with smtplib from inside a Mininet host; print the outcome as JSON.

    sendmail.py SERVER --from A --to B --subject S [--size BYTES] [--timeout 3]

{"outcome": "delivered" | "refused" | "timeout" | "error", "code": ..., "detail": ..., "message_id": ...}
A timeout means no SMTP server answered: the connection was dropped on the way.
"""
import argparse
import json
import smtplib
import socket
import sys
from email.message import EmailMessage
from email.utils import make_msgid


def build(mail_from, rcpt, subject, size):
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = mail_from, rcpt, subject
    message["Message-ID"] = make_msgid(domain=mail_from.rpartition("@")[2])
    line = "x" * 76 + "\n"  # SMTP lines must stay short; pad the body with many
    message.set_content("Hello from the smtp-border demo.\n" + line * max(0, size // len(line)))
    return message


def send(server, mail_from, rcpt, subject, size, timeout):
    message = build(mail_from, rcpt, subject, size)
    result = {"message_id": message["Message-ID"], "bytes": len(message.as_bytes())}
    try:
        with smtplib.SMTP(server, 25, timeout=timeout) as client:
            client.ehlo()
            # After the greeting, a long transfer may take a while.
            client.sock.settimeout(max(timeout, 120))
            client.send_message(message)  # announces SIZE when the server offers it
        result.update(outcome="delivered", code=250)
    except (socket.timeout, TimeoutError):
        result.update(outcome="timeout", detail=f"no answer from {server}:25 within {timeout:g} s")
    except smtplib.SMTPRecipientsRefused as err:
        code, text = next(iter(err.recipients.values()))
        result.update(outcome="refused", code=code, detail=text.decode(errors="replace"))
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as err:
        result.update(outcome="refused", code=err.smtp_code, detail=err.smtp_error.decode(errors="replace"))
    except (OSError, smtplib.SMTPException) as err:
        result.update(outcome="error", detail=str(err))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("server")
    parser.add_argument("--from", dest="mail_from", required=True)
    parser.add_argument("--to", dest="rcpt", required=True)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--size", type=int, default=0, help="approximate body size in bytes")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    print(json.dumps(send(args.server, args.mail_from, args.rcpt, args.subject, args.size, args.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
