"""Where exceptions added over the REST API live: a JSON file beside the policy.

The operator's policy.yaml (and its comments) is never rewritten. Writes are
crash-safe: the new state goes to a temporary file in the same directory,
is fsync'ed, and is renamed over the old one, and the directory is fsync'ed,
so after a crash the file holds either the old or the new state, whole.
"""
import json
import os
import tempfile
from pathlib import Path

from .policy import PolicyError

FORMAT = "smtp-border-api-exceptions"
VERSION = 1


def default_state_path(policy_path):
    """policy.yaml -> policy.api-exceptions.json, in the same directory."""
    path = Path(policy_path)
    return path.with_name(f"{path.stem}.api-exceptions.json")


def read_state(path):
    """The list of exception mappings in the state file; [] if there is none."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError(str(path), "", f"cannot read state file: {getattr(err, 'strerror', None) or err}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise PolicyError(str(path), f"line {err.lineno}, column {err.colno}", f"not valid JSON: {err.msg}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PolicyError(str(path), "format", f"not an smtp-border state file (expected format {FORMAT!r})")
    if document.get("version") != VERSION:
        raise PolicyError(str(path), "version", f"unsupported version {document.get('version')!r} (this is {VERSION})")
    exceptions = document.get("exceptions")
    if not isinstance(exceptions, list):
        raise PolicyError(str(path), "exceptions", "expected a list")
    return exceptions


def write_state(path, exceptions):
    """Atomically replace the state file with these exception mappings."""
    path = Path(path)
    document = {"format": FORMAT, "version": VERSION, "exceptions": list(exceptions)}
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory):
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
