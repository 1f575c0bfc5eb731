"""Reading policy.yaml and exceptions from elsewhere: the strict YAML
loader (duplicate keys refused, libyaml when present) and the validation of
every key, each problem one PolicyError naming the file, the key path and the
fix (smtp_border/policy.py holds what is read: the frozen Policy and its parts).
"""
import dataclasses
import datetime
import re

import netaddr
import yaml

from .policy import (
    DEFAULT_SAMPLE_RATE, DEFAULT_SMTP_PORTS, DEFAULT_WIDEST_EXCEPTION, MAX_DPID, MAX_OPENFLOW_PORT, MESSAGE_SIZE,
    PART2_GROUNDS, PART2_RULE, RELAY_SUFFICES, SOURCE_API, SOURCE_FILE, ApiSpec, AuditSpec, Direction, Gateway,
    MailException, Part2Spec, Policy, PolicyError, SwitchSpec, _did_you_mean, _join, _key, _kind, _one_line,
    MAX_TABLE_ID, PIPELINES, parse_size,
)


def read_policy(text, source):
    """The Policy of YAML `text` read from `source`, or PolicyError."""
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - safe loader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PolicyError(source, where, f"YAML syntax error: {_one_line(err.problem)}") from None
    except yaml.YAMLError as err:  # e.g. a control character PyYAML will not read
        raise PolicyError(source, "", f"YAML syntax error: {_one_line(err)}") from None
    except (ValueError, OverflowError) as err:  # a scalar past what Python reads: a 5,000-digit integer, year 10000
        raise PolicyError(source, "", f"a value cannot be read: {_one_line(err)[:200]}") from None
    if document is None:
        raise PolicyError(source, "", "the file is empty; it needs at least campus.prefixes")
    return _PolicyReader(source).read(document)


_STR_TAG = "tag:yaml.org,2002:str"


def _strict_loader(base):
    """A safe loader (`base`: PyYAML's SafeLoader or CSafeLoader) that
    rejects a key given twice in one mapping. PyYAML silently keeps the last
    value, which would hide an operator's typo."""

    class StrictLoader(base):
        def __init__(self, stream):
            super().__init__(stream)
            self._resolved = {}  # (text, implicit) -> tag, for this document

        def construct_mapping(self, node, deep=False):
            if all(key_node.tag == _STR_TAG for key_node, _ in node.value):
                # Text keys only (no merge keys): what PyYAML's constructor
                # would build, without its generic steps for other keys; a
                # 10,000-exception policy has 10,000 such mappings.
                mapping = {}
                for key_node, value_node in node.value:
                    if key_node.value in mapping:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                        )
                    mapping[key_node.value] = self.construct_object(value_node, deep=deep)
                return mapping
            seen = set()
            for key_node, _ in node.value:
                # Keys are plain scalars here; only other keys need constructing to compare.
                key = key_node.value if key_node.tag == _STR_TAG else self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

        def resolve(self, kind, value, implicit):
            # The tag of a plain scalar depends only on its text (the resolvers
            # are fixed): a 10,000-exception file repeats its keys and most
            # values 10,000 times, and each resolution tries several regexes.
            if kind is not yaml.ScalarNode:
                return super().resolve(kind, value, implicit)
            if value.count(".") > 1:
                # No implicit YAML 1.1 type (bool, int, float, null,
                # timestamp) has two dots: an IPv4 address is text, without
                # trying the regexes (tests/unit/test_policy.py checks this).
                return _STR_TAG
            key = (value, implicit)
            tag = self._resolved.get(key)
            if tag is None:
                tag = self._resolved[key] = super().resolve(kind, value, implicit)
            return tag

        def construct_yaml_timestamp(self, node):
            # An impossible date like 2027-13-01 raises ValueError in PyYAML; keep
            # the text so the reader can say which key holds it.
            try:
                return super().construct_yaml_timestamp(node)
            except ValueError:
                return self.construct_scalar(node)

    StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", StrictLoader.construct_yaml_timestamp)
    return StrictLoader


# libyaml's parser, which PyYAML's wheels carry: it reads a 10,000-exception
# policy about four times faster than the pure-Python one (1.26 s against
# 0.30 s with validation, docs/performance.md). The constructor, and so the
# checks above, stay in Python; nodes carry the same marks, so errors name
# the same lines (libyaml words some syntax errors differently).
# Text fields: one line of printable characters, of a length a person writes.
MAX_TEXT = 1000
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

_StrictLoader = _strict_loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader))


_TOP_KEYS = {"campus": True, "smtp_ports": False, "gateways": False, "exceptions": False, "switches": False, "audit": False,
             "api": False, "part2_grounds": False, "part2_relay_suffices": False}
_API_KEYS = {"widest_exception": False}
_WIDEST_KEYS = {"ipv4": False, "ipv6": False}
_AUDIT_KEYS = {"sample_rate": False, "log": False}
_CAMPUS_KEYS = {"prefixes": True}
_GATEWAY_KEYS = {"name": True, "addresses": True, "max_message_size": False}
_EXCEPTION_KEYS = {"address": True, "direction": True, "reason": True, "contact": False, "expires": False,
                   "grounds": False, "needs_message_size": False}
_SWITCH_KEYS = {"dpid": True, "uplinks": False, "name": False, "access": False, "certificate_sha256": False,
                "pipeline": False, "table": False, "table_size": False, "ipv6_entry_cost": False, "meters": False,
                "bundles": False}
# switches[].pipeline (smtp_border/pipeline.py; kept here so that reading a
# policy needs nothing else).


_remembered_before = {}  # exception entry (as a key) -> MailException, from the last read
_remembered_now = {}  # the same, from the read under way
# Campus prefixes, and the ids of exception addresses found inside them: an
# address's id is a function of the address, so the set holds while the
# prefixes are the same. A read with other prefixes starts it again.
_inside = ((), set())


class _PolicyReader:
    def __init__(self, source):
        self.source = source

    def fail(self, path, problem):
        raise PolicyError(self.source, path, problem)

    def read(self, document):
        global _remembered_before, _remembered_now
        # What the previous read made of its entries, and what this one makes:
        # the memory holds two policies' entries at most.
        _remembered_before, _remembered_now = _remembered_now or _remembered_before, {}
        top = self.mapping(document, "", _TOP_KEYS)
        campus = self.mapping(top["campus"], "campus", _CAMPUS_KEYS)
        prefixes = self.networks(campus["prefixes"], "campus.prefixes", strict=True)
        ports = self.ports(top.get("smtp_ports", list(DEFAULT_SMTP_PORTS)), "smtp_ports")

        def check_inside(network, path):
            self.check_inside(network, path, prefixes)

        gateways = []
        for i, item in self.items(top.get("gateways", []), "gateways"):
            path = f"gateways[{i}]"
            fields = self.mapping(item, path, _GATEWAY_KEYS)
            name = self.text(fields["name"], f"{path}.name")
            addresses = self.networks(fields["addresses"], f"{path}.addresses")
            for j, address in enumerate(addresses):
                check_inside(address, f"{path}.addresses[{j}]")
            size = fields.get("max_message_size")
            gateways.append(Gateway(name=name, addresses=addresses,
                                    max_message_size=None if size is None else self.size(size, f"{path}.max_message_size")))
        self.unique([g.name for g in gateways], "gateways", "name")

        exceptions = []
        first_seen = {}  # id (a function of the address) -> index
        global _inside
        if _inside[0] != prefixes:
            _inside = (prefixes, set())
        inside = _inside[1]  # ids of addresses known to be inside these prefixes
        for i, item in self.items(top.get("exceptions", []), "exceptions"):
            exception = self.remembered_exception(item, i)
            if exception.id not in inside:
                check_inside(exception.address, f"exceptions[{i}].address")
                inside.add(exception.id)
            if exception.id in first_seen:
                self.fail(
                    f"exceptions[{i}].address",
                    f"{exception.address} is already listed at exceptions[{first_seen[exception.id]}]"
                    " (give one entry with direction: both)",
                )
            first_seen[exception.id] = i
            exceptions.append(exception)

        switches = None
        if top.get("switches") is not None:
            switches = tuple(self.switch(item, f"switches[{i}]") for i, item in self.items(top["switches"], "switches"))
            self.unique([s.dpid for s in switches], "switches", "dpid")

        policy = Policy(
            campus=prefixes,
            smtp_ports=ports,
            gateways=tuple(gateways),
            exceptions=tuple(exceptions),
            switches=switches,
            source=self.source,
            audit=self.audit(top.get("audit") or {}),
            api=self.api(top.get("api") or {}),
            part2=self.part2(top),
        )
        judged = tuple(policy.judged(e) for e in exceptions)
        return policy if all(a is b for a, b in zip(judged, exceptions)) else dataclasses.replace(policy, exceptions=judged)

    def part2(self, top):
        grounds = top.get("part2_grounds", list(PART2_GROUNDS))
        if not isinstance(grounds, list) or not all(isinstance(g, str) for g in grounds):
            self.fail("part2_grounds", f"expected a list of grounds (of {', '.join(PART2_GROUNDS)}), got {_kind(grounds)}")
        for i, ground in enumerate(grounds):
            if ground not in PART2_GROUNDS:
                self.fail(f"part2_grounds[{i}]", f"{ground!r} is not a ground the policy grants Part 2 exceptions for"
                          f" ({PART2_RULE!r}); use {', '.join(PART2_GROUNDS)}"
                          + _did_you_mean(ground, list(PART2_GROUNDS)))
        mode = top.get("part2_relay_suffices", "report")
        if mode not in RELAY_SUFFICES:
            self.fail("part2_relay_suffices", f"{mode!r}: use {' or '.join(RELAY_SUFFICES)} (what to do with a"
                      " message-size grant once the relay carries what it needs)")
        return Part2Spec(grounds=tuple(dict.fromkeys(grounds)), relay_suffices=mode)

    def size(self, value, path):
        try:
            return parse_size(value)
        except ValueError as err:
            self.fail(path, str(err))

    def api(self, item):
        fields = self.mapping(item, "api", _API_KEYS)
        widest = self.mapping(fields.get("widest_exception") or {}, "api.widest_exception", _WIDEST_KEYS)
        return ApiSpec(
            widest_ipv4=self.integer(widest.get("ipv4", DEFAULT_WIDEST_EXCEPTION[4]), "api.widest_exception.ipv4",
                                     0, 32, "a prefix length"),
            widest_ipv6=self.integer(widest.get("ipv6", DEFAULT_WIDEST_EXCEPTION[6]), "api.widest_exception.ipv6",
                                     0, 128, "a prefix length"),
        )

    def audit(self, item):
        fields = self.mapping(item, "audit", _AUDIT_KEYS)
        log = fields.get("log")
        return AuditSpec(
            sample_rate=self.integer(fields.get("sample_rate", DEFAULT_SAMPLE_RATE), "audit.sample_rate", 0, 100000,
                                     "a rate in packets per second"),
            log=None if log is None else self.text(log, "audit.log"),
        )

    def check_inside(self, network, path, prefixes):
        if not any(network in prefix for prefix in prefixes):
            self.fail(path, f"{network} is not inside the campus prefixes ({_join(prefixes)})")

    def remembered_exception(self, item, index):
        """exception(), remembering what the last read made of each entry:
        a reload of 10,000 exceptions after a one-line edit validates one.

        Safe because exception() is a pure function of the entry (its
        address, direction, reason, contact, expiry text), which is the key,
        with each value's type; only entries that passed are remembered, and
        a MailException cannot change. Where an entry will not hash (a list
        where text belongs), it is read as usual and fails."""
        try:
            key = tuple((k, type(v), v) for k, v in item.items()) if isinstance(item, dict) else None
            found = _remembered_before.get(key) or _remembered_now.get(key)
        except TypeError:
            key, found = None, None
        if found is None:
            found = self.exception(item, f"exceptions[{index}]")
        if key is not None:
            _remembered_now[key] = found
        return found

    def exception(self, item, path, source=SOURCE_FILE):
        fields = self.mapping(item, path, _EXCEPTION_KEYS)
        address = self.network(fields["address"], _key(path, "address"))
        direction_text = fields["direction"]
        try:
            direction = Direction(direction_text)
        except ValueError:
            choices = [d.value for d in Direction]
            self.fail(
                _key(path, "direction"),
                f"{direction_text!r} is not a direction; use one of {', '.join(choices)}"
                + _did_you_mean(direction_text, choices),
            )
        contact = fields.get("contact")
        grounds, needs = fields.get("grounds"), fields.get("needs_message_size")
        if grounds is not None:
            grounds = self.text(grounds, _key(path, "grounds"))
            if grounds not in PART2_GROUNDS:
                self.fail(_key(path, "grounds"), f"{grounds!r}: the policy grants Part 2 exceptions only for"
                          f" {', '.join(PART2_GROUNDS)} ({PART2_RULE!r})" + _did_you_mean(str(grounds), list(PART2_GROUNDS)))
            if not direction.allows_outbound:
                self.fail(_key(path, "grounds"), "grounds are for Part 2 (outbound) exceptions; an inbound exception"
                          " is a registered independent mail system and needs none")
        if needs is not None:
            if grounds != MESSAGE_SIZE:
                self.fail(_key(path, "needs_message_size"), f"goes with grounds: {MESSAGE_SIZE}")
            needs = self.size(needs, _key(path, "needs_message_size"))
        elif grounds == MESSAGE_SIZE:
            self.fail(_key(path, "needs_message_size"), "required with grounds: message-size: the size of message"
                      " the host must send (e.g. 200MB), to be reviewed when the relay's limit changes")
        return MailException(
            address=address,
            direction=direction,
            reason=self.text(fields["reason"], _key(path, "reason")),
            contact=None if contact is None else self.text(contact, _key(path, "contact")),
            expires=None if fields.get("expires") is None else self.timestamp(fields["expires"], _key(path, "expires")),
            source=source,
            grounds=grounds,
            needs_message_size=needs,
        )

    def switch(self, item, path):
        fields = self.mapping(item, path, _SWITCH_KEYS)
        name = fields.get("name")
        access = fields.get("access", False)
        if not isinstance(access, bool):
            self.fail(f"{path}.access", f"{access!r} is not true or false")
        uplinks = self.port_numbers(fields.get("uplinks", []), f"{path}.uplinks")
        if access and uplinks:
            self.fail(f"{path}.access", "an access switch has every port on the campus side; it has no uplinks"
                                        " (list its uplinks, or say access: true, not both)")
        if "uplinks" not in fields and not access:
            self.fail(f"{path}.uplinks", "missing required key (give [] to enforce by addresses alone,"
                                         " or access: true for an access switch)")
        pin = fields.get("certificate_sha256")
        pipeline = fields.get("pipeline", "auto")
        if pipeline not in PIPELINES:
            self.fail(f"{path}.pipeline", f"{pipeline!r} is not a pipeline profile (one of {', '.join(PIPELINES)})"
                      + _did_you_mean(str(pipeline), list(PIPELINES)))
        table = fields.get("table")
        if table is not None:
            table = self.integer(table, f"{path}.table", 0, MAX_TABLE_ID, "a table id")
            if pipeline == "multi_table":
                self.fail(f"{path}.table", "multi_table uses tables 0-2; a table id is for single_table"
                                           " (or auto, should it choose single_table)")
        size = fields.get("table_size")
        if size is not None:
            size = self.integer(size, f"{path}.table_size", 1, 10_000_000, "a number of table entries")
        cost = self.integer(fields.get("ipv6_entry_cost", 1), f"{path}.ipv6_entry_cost", 1, 4,
                            "the entries an IPv6 flow takes")
        for key in ("meters", "bundles"):
            if not isinstance(fields.get(key, False), bool):
                self.fail(f"{path}.{key}", f"{fields[key]!r} is not true or false (leave it out to ask the switch)")
        return SwitchSpec(
            dpid=self.dpid(fields["dpid"], f"{path}.dpid"),
            uplinks=uplinks,
            name=None if name is None else self.text(name, f"{path}.name"),
            access=access,
            certificate_sha256=None if pin is None else self.fingerprint(pin, f"{path}.certificate_sha256"),
            pipeline=pipeline, table=table, table_size=size, ipv6_entry_cost=cost,
            meters=fields.get("meters"), bundles=fields.get("bundles"),
        )

    def fingerprint(self, value, path):
        text = value.strip().lower().replace(":", "") if isinstance(value, str) else ""
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            self.fail(path, f"{value!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed, as"
                            " `openssl x509 -noout -fingerprint -sha256` prints it)")
        return text

    # -- shapes ---------------------------------------------------------------

    def mapping(self, value, path, known):
        if not isinstance(value, dict):
            self.fail(path or "top level", f"expected a mapping of keys, got {_kind(value)}")
        for key in value:
            if key not in known:
                self.fail(_key(path, key), f"unknown key {key!r}" + _did_you_mean(key, list(known)))
        for key, required in known.items():
            if required and key not in value:
                self.fail(_key(path, key), "missing required key")
        return value

    def items(self, value, path):
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"expected a list, got {_kind(value)}")
        return list(enumerate(value))

    def unique(self, values, path, key):
        seen = {}
        for i, value in enumerate(values):
            if value in seen:
                self.fail(f"{path}[{i}].{key}", f"{value!r} is already used by {path}[{seen[value]}]")
            seen[value] = i

    def text(self, value, path):
        """One line of printable text: a reason or contact ends up in log
        lines, the journal and terminals, where a newline would forge a line
        of its own and a lone surrogate cannot be written at all."""
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"expected non-empty text, got {_kind(value)}")
        value = value.strip()
        if len(value) > MAX_TEXT:
            self.fail(path, f"{len(value)} characters; at most {MAX_TEXT}")
        bad = _UNPRINTABLE.search(value)
        if bad:
            self.fail(path, f"contains U+{ord(bad.group()):04X} at character {bad.start() + 1}: text here is one line"
                            " of printable characters (no newlines, tabs or control characters)")
        return value

    # -- values ---------------------------------------------------------------

    def network(self, value, path, strict=False):
        if not isinstance(value, str):
            self.fail(path, f"expected an IP address or network, got {_kind(value)}")
        text = value.strip()
        address, slash, length = text.partition("/")
        try:
            # INET_PTON refuses the legacy shorthands ('10.20', '010.1.1.1') that
            # inet_aton would quietly turn into some other address.
            ip = netaddr.IPAddress(address, flags=netaddr.INET_PTON)
            if slash and not length.isdigit():
                raise ValueError(length)
            width = 32 if ip.version == 4 else 128
            prefixlen = int(length) if slash else width
            if prefixlen > width:
                raise ValueError(length)
            network = netaddr.IPNetwork((ip.value, prefixlen), version=ip.version)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            self.fail(path, f"{text!r} is not an IP address or network")
        if network.ip != network.network:
            what = "network" if strict else "address"
            self.fail(
                path,
                f"{text!r} has host bits set; as a {what} write {network.cidr}"
                + ("" if strict else f" or the host address {network.ip}"),
            )
        return network.cidr

    def networks(self, value, path, strict=False):
        items = self.items(value, path)
        if not items:
            self.fail(path, "expected a non-empty list of IP addresses or networks")
        result = tuple(self.network(v, f"{path}[{i}]", strict) for i, v in items)
        self._unique_in_list(result, path)
        return result

    def integer(self, value, path, lowest, highest, what):
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"{value!r} is not {what}")
        if not lowest <= value <= highest:
            self.fail(path, f"{value} is not {what} ({lowest}-{highest})")
        return value

    def ports(self, value, path):
        items = self.items(value, path)
        if not items:
            self.fail(path, "expected a non-empty list of TCP ports")
        ports = tuple(self.integer(v, f"{path}[{i}]", 1, 65535, "a TCP port") for i, v in items)
        self._unique_in_list(ports, path)
        return ports

    def port_numbers(self, value, path):
        items = self.items(value, path)
        ports = tuple(self.integer(v, f"{path}[{i}]", 1, MAX_OPENFLOW_PORT - 1, "an OpenFlow port number") for i, v in items)
        self._unique_in_list(ports, path)
        return ports

    def _unique_in_list(self, values, path):
        for i, value in enumerate(values):
            if value in values[:i]:
                self.fail(f"{path}[{i}]", f"{value} is listed twice")

    def dpid(self, value, path):
        if isinstance(value, str):
            text = value.strip().lower()
            try:
                if ":" in text:  # 00:00:00:00:00:00:00:01, as ovs-vsctl shows it
                    value = int(text.replace(":", ""), 16)
                elif len(text) == 16:  # 0000000000000001, as Ryu logs it
                    value = int(text, 16)
                else:
                    value = int(text, 0)
            except ValueError:
                self.fail(path, f"{value!r} is not a datapath id (an integer, 0x hex, or 16 hex digits)")
        return self.integer(value, path, 0, MAX_DPID, "a datapath id")

    def timestamp(self, value, path):
        if isinstance(value, datetime.datetime):
            moment = value
        elif isinstance(value, datetime.date):
            moment = datetime.datetime.combine(value, datetime.time())
        elif isinstance(value, str):
            try:
                moment = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                self.fail(path, f"{value!r} is not a date or time (use ISO 8601, e.g. 2027-06-30T00:00:00Z)")
        else:
            self.fail(path, f"expected a date or time, got {_kind(value)}")
        # YAML timestamps without an offset are UTC by the YAML spec.
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        try:
            return moment.astimezone(datetime.timezone.utc)
        except OverflowError:  # 9999-12-31T23:00:00-05:00 is past year 9999 in UTC
            self.fail(path, f"{value!s} is out of range: a time must fall within the years 1-9999 in UTC")


def read_exception(data, campus, source="request", path="", origin=SOURCE_API, recorded=False):
    """One exception that does not come from the policy file (a REST request
    body, the state file), checked against the campus prefixes."""
    reader = _PolicyReader(source)
    provenance = {}
    if recorded and isinstance(data, dict):
        data = dict(data)
        for key in ("created_by", "created_at"):
            if data.get(key) is not None:
                provenance[key] = data.pop(key)
            else:
                data.pop(key, None)
    exception = reader.exception(data, path, origin)
    if provenance:
        exception = dataclasses.replace(
            exception,
            created_by=reader.text(provenance["created_by"], _key(path, "created_by")) if "created_by" in provenance else None,
            created_at=reader.timestamp(provenance["created_at"], _key(path, "created_at")) if "created_at" in provenance else None)
    if campus is not None:  # None: judged against the file later (store.Quarantined)
        reader.check_inside(exception.address, _key(path, "address"), campus)
    return exception


