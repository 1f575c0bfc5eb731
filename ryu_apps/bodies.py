"""What a request carries, read so that no input can hurt (issue 24): a
JSON body with unique keys and bounded numbers, query parameters bounded
and named in every error (ryu_apps/rest.py)."""
import datetime
import json
import re

from ryu_apps.web import HttpError
from smtp_border.audit import parse_time

MAX_BODY = 64 * 1024
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW = 3650 * 86400


class _Refused(ValueError):
    def __init__(self, message, field=None):
        super().__init__(message)
        self.field = field


# Numbers in a body: a size in bytes or a count is never longer than this;
# Python refuses to read integers past 4,300 digits, with a ValueError that
# once became a 500.
MAX_DIGITS = 20


def _unique_keys(pairs):
    """A JSON object whose keys are unique (as policy.yaml's must be): JSON
    lets the last of two equal keys win silently, which hides a mistake."""
    document = {}
    for key, value in pairs:
        if key in document:
            raise _Refused(f"key {key!r} is given twice", field=key)
        document[key] = value
    return document


def _bounded_int(text):
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise _Refused(f"a number of {len(text.lstrip('-'))} digits; at most {MAX_DIGITS}")
    return int(text)


def _finite_float(text):
    if len(text) > 2 * MAX_DIGITS:
        raise _Refused(f"a number of {len(text)} characters; at most {2 * MAX_DIGITS}")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"{text[:24]} is out of range")
    return value


def _no_constant(name):
    raise _Refused(f"{name} is not a number JSON allows")


def read_json(req, max_body=MAX_BODY):
    if req.content_length and req.content_length > max_body:
        raise HttpError(413, f"request body larger than {max_body} bytes")
    if req.content_type != "application/json":
        raise HttpError(415, f"expected Content-Type application/json, got {req.content_type or 'none'}")
    body = req.body_file.read(max_body + 1)
    if len(body) > max_body:
        raise HttpError(413, f"request body larger than {max_body} bytes")
    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys, parse_int=_bounded_int,
                              parse_float=_finite_float, parse_constant=_no_constant)
    except _Refused as err:
        raise HttpError(400, f"request body refused: {err}", field=err.field) from None
    except UnicodeDecodeError:
        raise HttpError(400, "request body is not UTF-8") from None
    except json.JSONDecodeError as err:
        raise HttpError(400, f"request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:
        raise HttpError(400, "request body is nested too deeply") from None
    if not isinstance(document, dict):
        raise HttpError(400, "request body must be a JSON object")
    return document


def query_int(req, name, default, lowest, highest):
    text = req.GET.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise HttpError(400, f"{name}: {text!r} is not a whole number", field=name) from None
    if not lowest <= value <= highest:
        raise HttpError(400, f"{name}: {value} is not between {lowest} and {highest}", field=name)
    return value


def query_time(req, name):
    text = req.GET.get(name)
    if text is None:
        return None
    try:
        moment = parse_time(text)
        moment = moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)
        moment.astimezone(datetime.timezone.utc)  # an offset that pushes it past year 9999 fails here
    except (ValueError, OverflowError):
        raise HttpError(400, f"{name}: {text!r} is not an ISO 8601 time", field=name) from None
    return moment


def query_window(req, name, default):
    """A duration: seconds, or a number with s, m, h or d (90m, 24h, 7d)."""
    text = req.GET.get(name)
    if text is None:
        return default
    match = re.fullmatch(r"(\d{1,12})([smhd]?)", text.strip())
    if not match or int(match.group(1)) == 0:
        raise HttpError(400, f"{name}: {text!r} is not a duration like 3600, 90m, 24h or 7d", field=name)
    seconds = int(match.group(1)) * WINDOW_UNITS[match.group(2) or "s"]
    if seconds > MAX_WINDOW:
        raise HttpError(400, f"{name}: {text!r} is longer than {MAX_WINDOW // 86400} days", field=name)
    return seconds


