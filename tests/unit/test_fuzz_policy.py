"""The policy parser is fuzzed: no input crashes it or escapes as anything but a
PolicyError, and every rejection is one clear line naming the file."""
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_border.policy import PolicyError, parse_policy

from conftest import ROOT
from strategies import examples

SETTINGS = settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["campus", "prefixes", "smtp_ports", "gateways", "name", "addresses", "exceptions", "address", "direction",
        "reason", "contact", "expires", "switches", "dpid", "uplinks", "audit", "sample_rate", "log", "other"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=30),
    st.sampled_from(["10.20.0.0/16", "10.20.1.5", "fd00:20::/48", "300.1.1.1", "::", "0.0.0.0/0", "inbound",
                     "outbound", "both", "2027-06-30T00:00:00Z", "2027-13-40", "0x1", "00:00:00:00:00:00:00:01",
                     "10.20.0.1/16", "-1", "1e400", "\x00", "10.20.0.0/99"]),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=5)),
    max_leaves=25,
)


def check(text):
    try:
        parse_policy(text, source="policy.yaml")
    except PolicyError as err:
        message = str(err)
        assert message.startswith("policy.yaml: ") and "\n" not in message and "Traceback" not in message
        return False
    return True


@SETTINGS
@given(DOCUMENTS)
def test_random_documents(document):
    check(yaml.safe_dump(document))


@SETTINGS
@given(st.text(max_size=300))
def test_random_text(text):
    check(text)


SHIPPED = yaml.safe_load((ROOT / "policy.yaml").read_text())


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from paths(value, prefix + (i,))


ALL_PATHS = [p for p in paths(SHIPPED) if p]


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), SCALARS | st.lists(SCALARS, max_size=3)), min_size=1, max_size=3))
def test_mutated_shipped_policy(mutations):
    """The shipped policy with a few values replaced: valid or a clear error."""
    import copy

    document = copy.deepcopy(SHIPPED)
    for path, value in mutations:
        node = document
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    check(yaml.safe_dump(document, default_flow_style=False))
