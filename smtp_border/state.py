"""Where exceptions added over the REST API live: a file beside the policy.

The operator's policy.yaml (and its comments) is never rewritten. The state
file is a journal in JSON lines: a header line, then one line per change
(`{"remove": [addresses], "add": [exceptions]}`), so that saving a change
costs one append and one fsync whatever the number of exceptions (rewriting
a 10,000-exception file per change cost ~50 ms). A change is saved whole or
not at all: it is one line, and a last line without its newline (a crash
mid-write, never acknowledged) is ignored. When the journal has grown to
several times the exceptions it holds, it is compacted: the current
exceptions go to a temporary file in the same directory, which is fsync'ed
and renamed over the journal, and the directory is fsync'ed; after a crash
the file holds the old journal or the new one, whole.

A change the caller is told failed never comes back after a restart: if
appending its line fails at any point (the write, or the fsync after it,
when the line may already be in the page cache and reach the disk later),
the file is cut back to its length before the change and fsync'ed; if even
that fails, it is rewritten whole, atomically, with the exceptions as they
were. Only when both fail is the file in doubt, and then StateUnavailable
says so and every later change is refused until the file is writable again.

Version 1 files (one JSON document, written by earlier releases) are still
read; the first change rewrites them as a journal.
"""
import json
import os
import tempfile
import time
from pathlib import Path

from .policy import PolicyError

FORMAT = "smtp-border-api-exceptions"
VERSION = 2
# Compact once the journal holds this many more change lines than exceptions.
COMPACT_SLACK = 1000


class StateUnavailable(Exception):
    """A change could not be saved; the exceptions in force are those before it."""


def default_state_path(policy_path):
    """policy.yaml -> policy.api-exceptions.json, in the same directory."""
    path = Path(policy_path)
    return path.with_name(f"{path.stem}.api-exceptions.json")


def read_state(path):
    """The exception mappings the state file holds, oldest first; [] without a file."""
    return StateFile(path).load()


class StateFile:
    def __init__(self, path):
        self.path = Path(path)
        self._lines = 0  # change lines in the journal on disk
        self._live = 0  # exceptions the journal holds
        self._journal = False  # the file on disk is a journal that can be appended to
        self._replaced = False  # the last rewrite got as far as the rename

    def load(self):
        """Read the file; PolicyError (naming the file and line) if it is not a state file."""
        self._journal, self._lines, self._live = False, 0, 0
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as err:
            raise self._error("", f"cannot read state file: {err.strerror or err}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise self._error("", "cannot read state file: not UTF-8") from None
        first = text.split("\n", 1)[0]
        try:
            header = json.loads(first)
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("version") == 1:
            return self._load_version_1(text)
        self._check_header(header, VERSION)
        complete, _, torn = text.rpartition("\n")
        exceptions = {}
        for number, line in enumerate(complete.split("\n")[1:], start=2):
            self._replay(exceptions, line, number)
        self._lines, self._live = complete.count("\n"), len(exceptions)
        # Appending after a torn line would glue it to the next change.
        self._journal = not torn
        return list(exceptions.values())

    def record(self, removed, added, everything, before):
        """Save one change durably: `removed` addresses, `added` mappings.
        `everything()` gives all exceptions after the change, for compaction;
        `before()` those before it, to put back if the change cannot be saved.
        Raises StateUnavailable, and then the file holds the state before."""
        if not self._journal or self._lines >= 2 * self._live + COMPACT_SLACK:
            self._replaced = False
            try:
                self.rewrite(everything())
            except OSError as err:
                if self._replaced:  # only the directory fsync failed: put the old state back
                    self._restore(before, err)
                # The temporary file never replaced the journal: nothing to undo.
                raise StateUnavailable(f"cannot save the change in {self.path}: {_reason(err)}") from None
            return
        line = json.dumps({"remove": list(removed), "add": list(added)}, sort_keys=True, separators=(",", ":"))
        try:
            with open(self.path, "ab") as stream:
                length = stream.tell()
                try:
                    stream.write(line.encode() + b"\n")
                    stream.flush()
                    os.fsync(stream.fileno())
                except OSError as err:
                    # The line may be in the page cache and reach the disk
                    # later: cut it off, durably, before saying it failed.
                    try:
                        _cut(stream, length)
                    except OSError:
                        self._restore(before, err)
                    raise StateUnavailable(f"cannot save the change in {self.path}: {_reason(err)}") from None
        except OSError as err:  # could not even open it
            raise StateUnavailable(f"cannot save the change in {self.path}: {_reason(err)}") from None
        self._lines += 1
        self._live += len(added) - len(removed)

    def _restore(self, before, err):
        """After a failed save: rewrite the file with the state before the change."""
        try:
            self.rewrite(before())
        except OSError as again:
            self._journal = False
            raise StateUnavailable(
                f"cannot save the change in {self.path} ({_reason(err)}), nor restore it ({_reason(again)}):"
                " the file may hold the refused change; fix the disk, then restart"
            ) from None
        raise StateUnavailable(f"cannot save the change in {self.path}: {_reason(err)}") from None

    def rewrite_on_next_record(self):
        """Have the next change rewrite the whole file (say, to normalise it)."""
        self._journal = False

    def rewrite(self, exceptions):
        """Atomically replace the file with a journal holding `exceptions`."""
        exceptions = list(exceptions)
        lines = [json.dumps({"format": FORMAT, "version": VERSION})]
        if exceptions:
            lines.append(json.dumps({"remove": [], "add": exceptions}, sort_keys=True, separators=(",", ":")))
        data = ("\n".join(lines) + "\n").encode()
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
            self._replaced = True
        except BaseException:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            raise
        _fsync_directory(self.path.parent)
        self._journal, self._lines, self._live = True, len(lines) - 1, len(exceptions)

    def _replay(self, exceptions, line, number):
        entry, bad = _read_line(line)
        if bad:
            column, problem = bad
            raise self._error(f"line {number}" + (f", column {column}" if column else ""), problem)
        for address in entry["remove"]:
            exceptions.pop(address, None)
        for item in entry["add"]:
            exceptions.pop(item["address"], None)  # a re-added address moves to the end
            exceptions[item["address"]] = item

    def _load_version_1(self, text):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            raise self._error(f"line {err.lineno}, column {err.colno}", f"not valid JSON: {err.msg}") from None
        self._check_header(document, 1)
        exceptions = document.get("exceptions")
        if not isinstance(exceptions, list):
            raise self._error("exceptions", "expected a list")
        self._live = len(exceptions)
        return exceptions

    def _check_header(self, document, version):
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise self._error("format", f"not an smtp-border state file (expected format {FORMAT!r})")
        if document.get("version") != version:
            raise self._error("version", f"unsupported version {document.get('version')!r} (this is {VERSION})")

    def _error(self, where, problem):
        return PolicyError(str(self.path), where, f"{problem} (`smtp-border state check {self.path}` lists every"
                           f" problem; `smtp-border state repair {self.path}` keeps every valid line)")


def _read_line(line):
    """A journal change line: (entry, None), or (None, (column or None, why it
    cannot be replayed)). One reading for the load, `check` and `repair`."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        return None, (err.colno, f"not valid JSON: {err.msg}")
    if not isinstance(entry, dict) or not isinstance(entry.get("remove"), list) or not isinstance(entry.get("add"), list):
        return None, (None, 'expected {"remove": [...], "add": [...]}')
    if not all(isinstance(a, str) for a in entry["remove"]):
        return None, (None, "a removal that is not an address")
    if not all(isinstance(i, dict) and isinstance(i.get("address"), str) for i in entry["add"]):
        return None, (None, "an added exception without an address")
    return entry, None


def _line_problem(line):
    """Why a journal line cannot be replayed (its column, for JSON), or None."""
    bad = _read_line(line)[1]
    if bad is None:
        return None
    column, problem = bad
    return problem + (f" (column {column})" if column else "")


def check(path):
    """Every problem of the journal at `path`: [(line number, problem)]; [] when it is whole."""
    data = Path(path).read_bytes()
    problems = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        problems.append((data.count(b"\n", 0, err.start) + 1, "bytes that are not UTF-8"))
        text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    try:
        header = json.loads(lines[0])
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
            problems.append((1, f"not a version {VERSION} {FORMAT} header"))
    except json.JSONDecodeError:
        problems.append((1, "the header is not valid JSON"))
    for number, line in enumerate(lines[1:-1], start=2):
        problem = _line_problem(line)
        if problem:
            problems.append((number, problem))
    if lines[-1]:
        problems.append((len(lines), "a last line without its newline (a write cut short: never acknowledged)"))
    return problems


def repair(path, now=None):
    """Keep every valid change line of the journal at `path`, in order, under
    a fresh header; the lines dropped go to a side file. The file is never
    rewritten in place: it is copied to a backup first, and the repaired
    journal replaces it atomically. Returns (backup, side file or None, kept, dropped)."""
    path = Path(path)
    stamp = (now or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    data = path.read_bytes()
    lines = data.decode("utf-8", errors="replace").split("\n")
    kept, dropped = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        problem = _line_problem(line) if number < len(lines) else "cut short"
        (dropped if problem else kept).append((number, line, problem))
    try:
        header_ok = json.loads(lines[0]).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        header_ok = False
    if not header_ok:
        dropped.insert(0, (1, lines[0], "header"))
    backup = path.with_name(f"{path.name}.bak-{stamp}")
    with open(backup, "xb") as stream:  # never over an earlier backup
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    side = None
    if dropped:
        side = path.with_name(f"{path.name}.dropped-{stamp}")
        with open(side, "x", encoding="utf-8") as stream:
            for number, line, problem in dropped:
                stream.write(f"# line {number}: {problem}\n{line}\n")
    text = "\n".join([json.dumps({"format": FORMAT, "version": VERSION})] + [line for _, line, _ in kept]) + "\n"
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)
    return backup, side, len(kept), len(dropped)


def _cut(stream, length):
    """Cut the file back to `length` bytes, durably."""
    stream.truncate(length)
    os.fsync(stream.fileno())


def _reason(err):
    return err.strerror or str(err)


def _fsync_directory(directory):
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
