"""Who may use the API, by name: the clients of SMTP_POLICY_TOKENS_FILE.

One shared token says nothing of who granted what; the policy's point is an
authoritative list of mail servers, and an authority knows who granted each
entry. So every client has a name, and every change records it
(smtp_border/trail.py). The file has one client a line:

    # NAME   SCOPE  SHA-256 of the token
    alice    write  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    grafana  read   sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752

`write` clients change the policy and read everything; `read` clients read
who was blocked (what SMTP_POLICY_READ_TOKEN reads) and change nothing.
Tokens are kept only as hashes, and a file others may read is refused, as
ssh refuses such keys. `smtp-border token new NAME` makes a token and its
line. SMTP_POLICY_TOKEN keeps working, as the client `admin` (write), and
SMTP_POLICY_READ_TOKEN as `reader` (read).

The file is read again when it changes (its size or time), so adding or
revoking a client needs no restart; a file that no longer reads keeps the
clients it had, and says why once.
"""
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass

WRITE, READ = "write", "read"
SCOPES = (WRITE, READ)
TOKENS_FILE_ENV = "SMTP_POLICY_TOKENS_FILE"
TOKEN_ENV = "SMTP_POLICY_TOKEN"  # the client "admin"
READ_TOKEN_ENV = "SMTP_POLICY_READ_TOKEN"  # the client "reader"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class ClientsError(ValueError):
    """The tokens file cannot be used: names the file, the line and the fix."""


@dataclass(frozen=True)
class Client:
    name: str
    scope: str
    digest: str  # hex SHA-256 of the token

    @property
    def writes(self):
        return self.scope == WRITE


def digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(name, scope=WRITE):
    """A new random token for client `name`, and the line for the tokens file."""
    if not _NAME.fullmatch(name):
        raise ClientsError(f"{name!r} is not a client name: letters, digits and . _ @ -, at most 64")
    if scope not in SCOPES:
        raise ClientsError(f"{scope!r} is not a scope: {' or '.join(SCOPES)}")
    token = secrets.token_urlsafe(32)
    return token, f"{name} {scope} sha256:{digest(token)}"


def parse_clients(text, source):
    """The clients of a tokens file's `text`; ClientsError naming `source`, the line and the fix."""
    clients, names = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        words = line.split()
        if len(words) != 3:
            raise ClientsError(f"{where}: expected NAME SCOPE sha256:HEX (three words), got {len(words)}")
        name, scope, hashed = words
        if not _NAME.fullmatch(name):
            raise ClientsError(f"{where}: {name!r} is not a client name: letters, digits and . _ @ -, at most 64")
        if name in names:
            raise ClientsError(f"{where}: client {name!r} is listed twice")
        if scope not in SCOPES:
            raise ClientsError(f"{where}: scope {scope!r} is not {' or '.join(SCOPES)}")
        found = _DIGEST.fullmatch(hashed)
        if not found:
            raise ClientsError(f"{where}: expected sha256: and 64 lowercase hex digits (the token's SHA-256, never"
                               " the token itself); `smtp-border token new NAME` prints the line")
        names.add(name)
        clients.append(Client(name, scope, found.group(1)))
    return clients


def read_clients(path):
    """The clients of the tokens file at `path`; ClientsError if it cannot be used."""
    try:
        with open(path, encoding="utf-8") as stream:
            mode = os.fstat(stream.fileno()).st_mode
            text = stream.read()
    except OSError as err:
        raise ClientsError(f"{path}: cannot read the tokens file ({TOKENS_FILE_ENV}): {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ClientsError(f"{path}: not UTF-8") from None
    if mode & 0o007:
        raise ClientsError(f"{path}: others may read it (mode {mode & 0o777:o}); the hashes would let them try"
                           f" tokens offline: chmod 640 {path}")
    return parse_clients(text, path)


class Clients:
    """Every client that may use the API, from the environment: the tokens
    file (read again when it changes) and the two single tokens."""

    def __init__(self, environ=None, log=None):
        environ = os.environ if environ is None else environ
        self.path = environ.get(TOKENS_FILE_ENV) or None
        self.log = log
        self._fixed = []
        if environ.get(TOKEN_ENV):
            self._fixed.append(Client("admin", WRITE, digest(environ[TOKEN_ENV])))
        if environ.get(READ_TOKEN_ENV):
            self._fixed.append(Client("reader", READ, digest(environ[READ_TOKEN_ENV])))
        self._listed, self._seen, self._error = [], None, None
        if self.path:
            self._listed = read_clients(self.path)  # at start an unusable file is fatal: fail closed, say why
            self._seen = self._stamp()

    def __bool__(self):
        return bool(self._fixed or self._listed or self.path)

    @property
    def names(self):
        return [c.name for c in self._fixed + self._listed]

    def who(self, token):
        """The Client whose token this is, or None. Every digest is compared,
        in constant time, whichever matches."""
        self._refresh()
        given = digest(token).encode()
        found = None
        for client in self._fixed + self._listed:
            if hmac.compare_digest(given, client.digest.encode()) and found is None:
                found = client
        return found

    def _stamp(self):
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _refresh(self):
        if not self.path:
            return
        stamp = self._stamp()
        if stamp == self._seen:
            return
        self._seen = stamp
        try:
            self._listed = read_clients(self.path)
            self._error = None
            if self.log:
                self.log.info("smtp-border: API clients read from %s: %s", self.path,
                              ", ".join(c.name for c in self._listed) or "none")
        except ClientsError as err:
            if self.log and str(err) != self._error:
                self.log.error("smtp-border: %s; keeping the %d client(s) read before", err, len(self._listed))
            self._error = str(err)
