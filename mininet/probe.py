#!/usr/bin/env python3
"""Tiny TCP/UDP listener and prober, run inside Mininet hosts.

    probe.py listen --tcp PORT... --udp PORT...   accept TCP (IPv4 and IPv6), read it to the end; echo UDP
    probe.py tcp DST PORT [--src A] [--timeout S]
    probe.py udp DST PORT [--src A] [--timeout S]
    probe.py stream DST PORT --seconds S   one TCP connection sending steadily for S seconds

A probe prints one word and exits 0: `open` (TCP handshake completed or UDP
echo came back), `timeout` (nothing came back: dropped), `refused` (a RST:
the path works but nothing listens, which a test treats as a set-up error)
or `error:<reason>`. A stream prints `stream <bytes sent> <longest stall, ms>`
or `broken <reason>`. Only the standard library, so any python3 can run it.
"""
import argparse
import selectors
import socket
import sys
import time


def listen(tcp_ports, udp_ports):
    selector = selectors.DefaultSelector()
    listeners = set()
    wanted = [(p, socket.SOCK_STREAM) for p in tcp_ports] + [(p, socket.SOCK_DGRAM) for p in udp_ports]
    for port, kind in wanted:
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # One dual-stack socket per port: IPv4 arrives as ::ffff:a.b.c.d.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
            listeners.add(sock)
        selector.register(sock, selectors.EVENT_READ)
    print("listening", "tcp", *tcp_ports, "udp", *udp_ports, flush=True)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            if sock in listeners:
                conn, _ = sock.accept()
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
            elif sock.type == socket.SOCK_STREAM:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    sock.close()
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


def stream(dst, port, seconds, chunk=1024, interval=0.01):
    """Send `chunk` bytes every `interval` for `seconds` on one connection and
    report the longest time one send took to get through (a stall)."""
    try:
        sock = socket.create_connection((dst, port), timeout=5)
    except OSError as err:
        return f"broken connect: {err}"
    # A small send buffer makes a stalled path show up as a blocked send.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.settimeout(10)
    sent, longest, end = 0, 0.0, time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            started = time.monotonic()
            sock.sendall(b"x" * chunk)
            longest = max(longest, time.monotonic() - started)
            sent += chunk
            time.sleep(interval)
    except OSError as err:
        return f"broken after {sent} bytes: {err}"
    finally:
        sock.close()
    return f"stream {sent} {longest * 1000:.0f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("listen")
    p.add_argument("--tcp", type=int, nargs="*", default=[])
    p.add_argument("--udp", type=int, nargs="*", default=[])
    for kind in ("tcp", "udp"):
        p = sub.add_parser(kind)
        p.add_argument("dst")
        p.add_argument("port", type=int)
        p.add_argument("--src")
        p.add_argument("--timeout", type=float, default=2.0)
    p = sub.add_parser("stream")
    p.add_argument("dst")
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    if args.command == "listen":
        listen(args.tcp, args.udp)
    elif args.command == "stream":
        print(stream(args.dst, args.port, args.seconds))
    else:
        print(probe(args.command, args.dst, args.port, args.src, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
