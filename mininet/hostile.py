"""A hostile OpenFlow peer for tests: a TCP proxy between a real Open vSwitch
bridge and the controller. It forwards every message both ways until told
to misbehave, so the controller meets a real handshake from a real switch,
then a real fault:

    silent          forwards nothing more, either way (a hung switch)
    more_forever    answers the controller's flow-stats requests itself,
                    with REPLY_MORE parts that never end
    table_features  answers table-features requests with an entry whose
                    length field claims far more than it carries
    flood(kind)     sends the controller errors, echo requests or packet-ins
                    (with a block cookie and a payload that does not parse)

Everything it sends is bounded in count and time; it listens on loopback
and stops its threads when closed.
"""
import socket
import struct
import threading
import time

OFP_VERSION = 4
OFPT_ERROR, OFPT_ECHO_REQUEST, OFPT_PACKET_IN = 1, 2, 10
OFPT_MULTIPART_REQUEST, OFPT_MULTIPART_REPLY = 18, 19
OFPMP_FLOW, OFPMP_TABLE_FEATURES = 1, 12
OFPMPF_REPLY_MORE = 1
HEADER = struct.Struct("!BBHI")
# An IPv4 header that makes the framework's packet parser raise (tests/unit/test_agent.py).
GARBAGE = bytes.fromhex("0000000000000000000000000800453a83cbdca01c9fee4263bef1bd7588b9f871b133b0aed1b09e8e216fbfa971f64"
                        "16493")


def frames(sock):
    """OpenFlow messages from a socket, until it closes."""
    buffer = b""
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        buffer += data
        while len(buffer) >= HEADER.size:
            length = HEADER.unpack_from(buffer)[2]
            if length < HEADER.size or len(buffer) < length:
                break
            yield buffer[:length]
            buffer = buffer[length:]


def _flow_stats_entry():
    """One ofp_flow_stats entry: 48 bytes and an empty match (8 bytes)."""
    entry = struct.pack("!HBxIIHHHH4xQQQ", 56, 1, 0, 0, 100, 0, 0, 0, 0x534D230000000001, 0, 0)
    return entry + struct.pack("!HH4x", 1, 4)


class HostileProxy:
    def __init__(self, controller_port, cookie=0):
        self.controller_port = controller_port
        self.cookie = cookie  # a block flow's cookie, for packet-ins
        self.mode = "forward"
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.connections = []  # (switch side, controller side, write lock)
        self.sent = {"more_parts": 0, "errors": 0, "echoes": 0, "packet_ins": 0, "table_features": 0}
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    # -- what a test says ---------------------------------------------------------

    def flood(self, kind, count, burst=200, every=0.05):
        """Send the controller `count` messages of `kind` (errors, echoes,
        packet_ins), `burst` at a time every `every` seconds, on the newest
        connection, until it is closed. Returns how many were sent."""
        _, controller, lock = self.connections[-1]
        message = {"errors": self._error, "echoes": self._echo, "packet_ins": self._packet_in}[kind]
        sent = 0
        while sent < count and not self.stopped.is_set():
            n = min(burst, count - sent)
            try:
                with lock:
                    controller.sendall(b"".join(message(sent + i) for i in range(n)))
            except OSError:
                break  # closed by the controller
            sent += n
            time.sleep(every)
        self.sent[kind] += sent
        return sent

    def closed_by_controller(self):
        """Whether the controller closed the newest connection."""
        _, controller, _ = self.connections[-1]
        try:
            return controller.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self):
        self.stopped.set()
        for switch, controller, _ in self.connections:
            for sock in (switch, controller):
                try:
                    sock.close()
                except OSError:
                    pass
        self.listener.close()

    # -- inside ---------------------------------------------------------------------

    def _accept(self):
        while not self.stopped.is_set():
            try:
                switch, _ = self.listener.accept()
                controller = socket.create_connection(("127.0.0.1", self.controller_port), timeout=10)
                controller.settimeout(None)
            except OSError:
                return
            lock = threading.Lock()
            self.connections.append((switch, controller, lock))
            threading.Thread(target=self._up, args=(switch, controller, lock), daemon=True).start()
            threading.Thread(target=self._down, args=(controller, switch, lock), daemon=True).start()

    def _up(self, switch, controller, lock):
        """Switch to controller."""
        for frame in frames(switch):
            if self.mode == "silent":
                continue
            try:
                with lock:
                    controller.sendall(frame)
            except OSError:
                break
        _shutdown(switch, controller)

    def _down(self, controller, switch, lock):
        """Controller to switch: forwarded, but for what the mode answers itself."""
        for frame in frames(controller):
            _, msg_type, _, xid = HEADER.unpack_from(frame)
            kind = struct.unpack_from("!H", frame, 8)[0] if msg_type == OFPT_MULTIPART_REQUEST else None
            if self.mode == "silent":
                continue
            if self.mode == "more_forever" and kind == OFPMP_FLOW:
                threading.Thread(target=self._more_forever, args=(controller, lock, xid), daemon=True).start()
                continue
            if self.mode == "table_features" and kind == OFPMP_TABLE_FEATURES:
                self._absurd_table_features(controller, lock, xid)
                continue
            try:
                switch.sendall(frame)
            except OSError:
                break
        _shutdown(switch, controller)

    def _more_forever(self, controller, lock, xid, seconds=60):
        body = _flow_stats_entry() * 1000
        part = struct.pack("!BBHIHH4x", OFP_VERSION, OFPT_MULTIPART_REPLY, 16 + len(body), xid, OFPMP_FLOW,
                           OFPMPF_REPLY_MORE) + body
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stopped.is_set():
            try:
                with lock:
                    controller.sendall(part)
            except OSError:
                return
            self.sent["more_parts"] += 1

    def _absurd_table_features(self, controller, lock, xid):
        entry = struct.pack("!HB5x", 0xFFF0, 0) + b"\x00" * 56  # claims 65,520 bytes, carries 64
        reply = struct.pack("!BBHIHH4x", OFP_VERSION, OFPT_MULTIPART_REPLY, 16 + len(entry), xid,
                            OFPMP_TABLE_FEATURES, 0) + entry
        try:
            with lock:
                controller.sendall(reply)
        except OSError:
            return
        self.sent["table_features"] += 1

    def _error(self, n):
        data = b"\x00" * 16
        return HEADER.pack(OFP_VERSION, OFPT_ERROR, 12 + len(data), 0x7F000000 + n) + struct.pack("!HH", 1, 1) + data

    def _echo(self, n):
        return HEADER.pack(OFP_VERSION, OFPT_ECHO_REQUEST, 8, 0x7E000000 + n)

    def _packet_in(self, n):
        match = struct.pack("!HHIIxxxx", 1, 12, 0x80000004, 1)  # OXM in_port=1, padded to 16
        body = struct.pack("!IHBBQ", 0xFFFFFFFF, len(GARBAGE), 1, 1, self.cookie) + match + b"\x00\x00" + GARBAGE
        return HEADER.pack(OFP_VERSION, OFPT_PACKET_IN, 8 + len(body), 0x7D000000 + n) + body


def _shutdown(*socks):
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
