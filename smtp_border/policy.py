"""Parse and validate policy.yaml into an immutable Policy.

Every problem is reported as one PolicyError whose text names the file, the key
path and the problem, for example::

    policy.yaml: exceptions[2].address: '10.20.3.300' is not an IP address or network

The parser never returns a half-checked policy: callers either get a complete
Policy or an error, so a bad reload can always keep the old policy in force.
"""
import contextlib
import dataclasses
import datetime
import difflib
import enum
import functools
import gc
import hashlib
from dataclasses import dataclass
from typing import Optional, Tuple

import netaddr

DEFAULT_SMTP_PORTS = (25,)
DEFAULT_SAMPLE_RATE = 10  # blocked-attempt samples per second per switch
# OpenFlow 1.3 reserves port numbers from 0xffffff00 up (OFPP_MAX).
MAX_OPENFLOW_PORT = 0xFFFFFF00
MAX_DPID = 2**64 - 1
PIPELINES = ("auto", "multi_table", "single_table")
MAX_TABLE_ID = 254


class PolicyError(ValueError):
    """A policy that cannot be enforced. str() is the one-line operator message."""

    def __init__(self, source, path, problem):
        self.source = source
        self.path = path
        self.problem = problem
        super().__init__(f"{source}: {path}: {problem}" if path else f"{source}: {problem}")


SOURCE_FILE = "file"
SOURCE_API = "api"


class Direction(enum.Enum):
    INBOUND = "inbound"  # Part 1: outside hosts may reach this campus host on SMTP
    OUTBOUND = "outbound"  # Part 2: this campus host may reach outside hosts on SMTP
    BOTH = "both"

    @property
    def allows_inbound(self):
        return self in (Direction.INBOUND, Direction.BOTH)

    @property
    def allows_outbound(self):
        return self in (Direction.OUTBOUND, Direction.BOTH)


@dataclass(frozen=True)
class Gateway:
    name: str
    addresses: Tuple[netaddr.IPNetwork, ...]
    # The largest message it relays, in bytes (the policy: "currently limits
    # the size of a message to 50 MB"); None: not declared.
    max_message_size: Optional[int] = None

    def to_dict(self):
        document = {"name": self.name, "addresses": [str(a) for a in self.addresses]}
        if self.max_message_size is not None:
            document["max_message_size"] = format_size(self.max_message_size)
        return document


# The grounds on which the policy grants Part 2 exceptions, as it words
# them. Part 2 accepts only these; a policy file may narrow them
# (part2_grounds), never widen them.
PART2_GROUNDS = {"message-size": "Message size limit"}
MESSAGE_SIZE = "message-size"
PART2_RULE = ("ITS will grant exceptions to Part 2 for the following reason(s), based on their strong technical"
              " merit: * Message size limit")
# What to do with a message-size grant once the relay carries what it needs
# (the policy grants them "until this changes"): report it for review, or
# let it lapse (outbound grants only: a `both` grant keeps its Part 1 half).
RELAY_SUFFICES = ("report", "lapse")


@dataclass(frozen=True)
class MailException:
    address: netaddr.IPNetwork
    direction: Direction
    reason: str
    contact: Optional[str] = None
    expires: Optional[datetime.datetime] = None  # always timezone-aware (UTC)
    source: str = SOURCE_FILE  # SOURCE_FILE (policy.yaml) or SOURCE_API (added over REST)
    # Part 2 grants: on what grounds (PART2_GROUNDS), and for message-size
    # the size the host must send, in bytes.
    grounds: Optional[str] = None
    needs_message_size: Optional[int] = None
    # Set by the policy it is in force in (Policy.judged): the relay now
    # carries what a message-size grant needs, and part2_relay_suffices is
    # "lapse", so it is no longer in force.
    lapsed: bool = False
    # Who granted it over the API (the client's name, smtp_border/clients.py)
    # and when: saved with it (journal, etcd), so it survives restarts and
    # replicas. Not part of what the grant is: the same grant again by
    # someone else is still the same grant.
    created_by: Optional[str] = dataclasses.field(default=None, compare=False)
    created_at: Optional[datetime.datetime] = dataclasses.field(default=None, compare=False)

    def is_active(self, now):
        return not self.lapsed and (self.expires is None or now < self.expires)

    @functools.cached_property  # a policy of 10,000 exceptions asks for every id at each change
    def id(self):
        return exception_id(self.address)

    def to_dict(self):
        return {
            "id": self.id,
            "address": str(self.address),
            "direction": self.direction.value,
            "reason": self.reason,
            "contact": self.contact,
            "expires": format_utc(self.expires),
            "source": self.source,
            "grounds": self.grounds,
            "needs_message_size": None if self.needs_message_size is None else format_size(self.needs_message_size),
            **({"lapsed": True} if self.lapsed else {}),
            **({"created_by": self.created_by, "created_at": format_utc(self.created_at)} if self.source == SOURCE_API
               else {}),
        }


@dataclass(frozen=True)
class SwitchSpec:
    dpid: int
    uplinks: Tuple[int, ...]
    name: Optional[str] = None
    access: bool = False  # every port is campus-side (an access switch)
    # SHA-256 of the certificate (DER) this switch must present over TLS,
    # 64 lowercase hex digits; None: any certificate from the campus CA.
    certificate_sha256: Optional[str] = None
    # How the policy is laid out in its tables (docs/hardware.md): "auto"
    # (probe the switch), "multi_table" or "single_table".
    pipeline: str = "auto"
    table: Optional[int] = None  # single_table: the table id (a switch's fixed ACL table)
    table_size: Optional[int] = None  # entries available in the table holding the exceptions
    ipv6_entry_cost: int = 1  # entries one IPv6 flow takes (2 on many ASICs)
    # None: as the switch says (meter features; whether it accepts a bundle).
    # False: never use them on this switch, whatever it says.
    meters: Optional[bool] = None
    bundles: Optional[bool] = None

    @property
    def by_port(self):
        """Direction is decided by the arrival port: a packet that does not
        arrive on an uplink is from the campus, whatever its source address
        (a NAT pool, an unlisted prefix, a forged or link-local address)."""
        return bool(self.uplinks) or self.access


@dataclass(frozen=True)
class AuditSpec:
    # Blocked packets sent to the controller, per second per switch, capped by
    # an OpenFlow meter; 0 turns sampling off (blocked packets are only counted).
    sample_rate: int = DEFAULT_SAMPLE_RATE
    log: Optional[str] = None  # JSON-lines file of blocked attempts; None: beside the policy


# The widest exception the REST API may grant, per IP version: a /24 of IPv4
# hosts, a /64 (one IPv6 subnet). Wider ones go in policy.yaml, where the
# operator's review is. Without it one request could exempt the whole campus.
DEFAULT_WIDEST_EXCEPTION = {4: 24, 6: 64}


@dataclass(frozen=True)
class ApiSpec:
    widest_ipv4: int = DEFAULT_WIDEST_EXCEPTION[4]
    widest_ipv6: int = DEFAULT_WIDEST_EXCEPTION[6]

    def widest(self, version):
        return self.widest_ipv4 if version == 4 else self.widest_ipv6


@dataclass(frozen=True)
class Part2Spec:
    grounds: Tuple[str, ...] = tuple(PART2_GROUNDS)  # accepted for new API grants
    relay_suffices: str = "report"  # RELAY_SUFFICES


@dataclass(frozen=True)
class Policy:
    campus: Tuple[netaddr.IPNetwork, ...]
    smtp_ports: Tuple[int, ...]
    gateways: Tuple[Gateway, ...]
    exceptions: Tuple[MailException, ...]
    # None: every switch enforces by addresses alone. A tuple: only these
    # switches enforce (with their uplinks); any other switch is inside.
    switches: Optional[Tuple[SwitchSpec, ...]]
    source: str = "policy"
    audit: AuditSpec = AuditSpec()
    api: ApiSpec = ApiSpec()
    part2: Part2Spec = Part2Spec()

    @functools.cached_property  # asked for every exception by relay_suffices
    def relay_limit(self):
        """The largest message the relay carries, in bytes (the largest any
        gateway declares), or None when none declares one."""
        sizes = [g.max_message_size for g in self.gateways if g.max_message_size is not None]
        return max(sizes) if sizes else None

    def relay_suffices(self, exception):
        """Does the relay now carry what this message-size grant needs? Such
        a grant existed "until this changes": it is for review, or lapses."""
        limit = self.relay_limit
        return (exception.grounds == MESSAGE_SIZE and exception.needs_message_size is not None
                and limit is not None and exception.needs_message_size <= limit)

    def judged(self, exception):
        """The exception as in force under this policy: lapsed when the relay
        suffices and the file says part2_relay_suffices: lapse (outbound
        grants only), in force again when it no longer does."""
        lapsed = (self.part2.relay_suffices == "lapse" and exception.direction is Direction.OUTBOUND
                  and self.relay_suffices(exception))
        return exception if exception.lapsed == lapsed else dataclasses.replace(exception, lapsed=lapsed)

    def for_review(self):
        """Message-size grants the relay now carries: (exception, why), for
        the reload answer, the inventory and a metric."""
        limit = self.relay_limit
        return tuple(
            (e, f"the relay now carries messages up to {format_size(limit)}; this grant needs"
                f" {format_size(e.needs_message_size)}" + ("; lapsed" if e.lapsed else ""))
            for e in self.exceptions if self.relay_suffices(e))

    def warnings(self):
        """What loads but deserves the operator's eye: Part 2 entries of the
        file that state no grounds (files from before grounds existed)."""
        return tuple(
            f"{self.source}: exceptions[{i}] ({e.address}): a Part 2 exception without grounds; the policy grants"
            f" them only for: {', '.join(PART2_GROUNDS[g] for g in self.part2.grounds)} (add grounds:"
            " message-size and needs_message_size)"
            for i, e in enumerate(self.exceptions)
            if e.source == SOURCE_FILE and e.direction.allows_outbound and e.grounds is None)

    def is_campus(self, address):
        return any(address in prefix for prefix in self.campus)

    def switch_spec(self, dpid):
        """The SwitchSpec that makes dpid enforce, or None for an inside switch.

        Without a `switches` list every switch enforces, with no uplinks."""
        if self.switches is None:
            return SwitchSpec(dpid=dpid, uplinks=())
        for spec in self.switches:
            if spec.dpid == dpid:
                return spec
        return None

    def active_exceptions(self, now=None):
        now = now or utc_now()
        return tuple(e for e in self.exceptions if e.is_active(now))


def exception_id(address):
    """Stable and URL-safe: derived from the address, which is unique in a
    policy, so the same exception keeps its id across reloads and restarts."""
    return hashlib.sha256(str(address).encode()).hexdigest()[:12]


def format_utc(moment):
    """An aware time as the API and the journal write it: 2027-06-30T00:00:00Z (None stays None)."""
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def load_policy(path):
    """Read and validate a policy file. Raises PolicyError, never anything else."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError(path, "", f"cannot read policy file: {_os_reason(err)}") from None
    return parse_policy(text, source=str(path))


_gc_pauses = [0, True]  # pauses under way; whether the collector ran before the first


@contextlib.contextmanager
def cyclic_gc_paused():
    """Python's cyclic garbage collector off for a while, across nested and
    concurrent (green-thread) users; as it was once the last one ends.

    Reading a policy, or compiling and encoding 10,000 flows, allocates
    hundreds of thousands of objects and frees none, so the collector runs
    again and again over everything the process holds, to find nothing: 45%
    of a reload of a 10,000-exception policy (170 ms with it paused, 300-380 ms
    without), up to a third of a full install, in spikes (docs/performance.md).
    Reference counting still frees memory meanwhile."""
    if not _gc_pauses[0]:
        _gc_pauses[1] = gc.isenabled()
    _gc_pauses[0] += 1
    gc.disable()
    try:
        yield
    finally:
        _gc_pauses[0] -= 1
        if not _gc_pauses[0] and _gc_pauses[1]:
            gc.enable()


def parse_policy(text, source="policy"):
    """Read and validate the text of a policy (smtp_border/reader.py)."""
    from .reader import read_policy

    with cyclic_gc_paused():
        return read_policy(text, source)


MAX_SIZE = 10**12  # 1 TB: a bound on any message size, so that no size is absurd
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(value):
    """A message size in bytes from 52428800, "50MB" or "50 MiB" (KB, MB,
    GB are powers of ten, as mail servers and the policy text count; KiB,
    MiB, GiB powers of two). ValueError naming the value otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a size such as 50MB, got {_kind(value)}")
    text = str(value).strip().upper()
    number = text.rstrip("KMGIB ")
    unit = text[len(number):].strip()
    if not number.isdigit() or len(number) > 13 or unit not in _SIZE_UNITS or int(number) == 0:
        raise ValueError(f"{value!r} is not a size; use bytes or a number with KB, MB, GB (or KiB, MiB, GiB), e.g. 50MB")
    size = int(number) * _SIZE_UNITS[unit]
    if size > MAX_SIZE:
        raise ValueError(f"{value!r} is more than {format_size(MAX_SIZE)}, which no mail system sends in one message")
    return size


def format_size(size):
    """The shortest exact spelling parse_size reads back: 50000000 -> "50MB"."""
    for unit in ("GB", "MB", "KB", "GiB", "MiB", "KiB"):
        factor = _SIZE_UNITS[unit.upper()]
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def parse_exception(data, campus, source="request", path="", origin=SOURCE_API, recorded=False):
    """Validate one exception that does not come from the policy file (a REST
    request body, the state file) against the campus prefixes. `recorded`:
    it was saved (journal, etcd) and may say who granted it and when; a
    request may not."""
    from .reader import read_exception

    return read_exception(data, campus, source, path, origin, recorded)


def _one_line(text):
    return " ".join(str(text).split())


def _key(path, name):
    return f"{path}.{name}" if path else str(name)


def _did_you_mean(word, choices):
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _kind(value):
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _join(networks):
    return ", ".join(str(n) for n in networks)


def _os_reason(err):
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err)
