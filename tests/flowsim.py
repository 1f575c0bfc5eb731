"""The flow evaluator the tests check compiled rules with now lives in the
core (smtp_border/flowsim.py), where `smtp-border explain` uses it too."""
from smtp_border.flowsim import FRAGMENT_BITS, forwards, outcomes, packet_fields, path  # noqa: F401
