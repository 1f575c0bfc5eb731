#!/usr/bin/env python3
"""Tiny TCP/UDP listener and prober, run inside Mininet hosts.

    probe.py listen PORT [PORT ...]         accept TCP (IPv4 and IPv6) and echo UDP on each port
    probe.py tcp DST PORT [--src A] [--timeout S]
    probe.py udp DST PORT [--src A] [--timeout S]

A probe prints one word and exits 0: `open` (TCP handshake completed or UDP
echo came back), `timeout` (nothing came back: dropped), `refused` (a RST: the
path works but nothing listens, which a test treats as a set-up error) or
`error:<reason>`. Only the standard library, so any python3 can run it.
"""
import argparse
import selectors
import socket
import sys


def listen(ports):
    selector = selectors.DefaultSelector()
    for port in ports:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            sock = socket.socket(socket.AF_INET6, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # One dual-stack socket per port: IPv4 arrives as ::ffff:a.b.c.d.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            selector.register(sock, selectors.EVENT_READ)
    print("listening", *ports, flush=True)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            if sock.type == socket.SOCK_STREAM:
                conn, _ = sock.accept()
                conn.close()
            else:
                data, peer = sock.recvfrom(2048)
                sock.sendto(data, peer)


def probe(kind, dst, port, src=None, timeout=2.0):
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        if src:
            sock.bind((src, 0))
        if kind == "tcp":
            sock.connect((dst, port))
        else:
            sock.sendto(b"probe", (dst, port))
            sock.recvfrom(2048)
        return "open"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as err:
        return f"error:{err.strerror or err}"
    finally:
        sock.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("listen").add_argument("ports", type=int, nargs="+")
    for kind in ("tcp", "udp"):
        p = sub.add_parser(kind)
        p.add_argument("dst")
        p.add_argument("port", type=int)
        p.add_argument("--src")
        p.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.command == "listen":
        listen(args.ports)
    else:
        print(probe(args.command, args.dst, args.port, args.src, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
