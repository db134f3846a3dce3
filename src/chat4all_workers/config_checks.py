"""What a valid setting value looks like: DSNs, URLs, `host:port` lists, names, cron expressions.

Each check takes the value as text and returns the problem in a few words, or None. `config.py`
attaches them to settings (`metadata={"check": ...}`) and reports a problem as one line naming
the key and its source. The checks of URLs and addresses never quote the value, nor any part of
it: they read secrets too (a DSN's password may sit anywhere in a malformed URL), so the rule is
kept for all of them rather than remembered for some. Only `cron` names the field it refuses.

`masked_url` is the one place that decides what of a secret URL may be shown (`config show`).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote, urlsplit

from chat4all_workers.schedule import Cron

Check = Callable[[str], str | None]

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?", re.ASCII)
# Kafka's rule for topic names: ASCII letters, digits, `.`, `_`, `-`; at most 249; not . or ..
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}", re.ASCII)
# S3's rule for bucket names (the strictest one, which MinIO and AWS share).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", re.ASCII)
_API_VERSION = re.compile(r"v\d{1,3}\.\d{1,3}", re.ASCII)
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Query parameters of a DSN whose values are credentials.
_SECRET_PARAM = re.compile(r"(?i)([^&=?]*(?:pass|secret|token)[^&=]*)=([^&]*)")
_UNENCODED = "an unencoded @, /, ? or # (percent-encode the password: %40 %2F %3F %23)"


def is_topic_name(text: str) -> bool:
    """Whether a client may produce to a topic of this name: Kafka's rule for names, and not one
    of Kafka's internal topics (`__consumer_offsets`, `__transaction_state`)."""
    legal = bool(_TOPIC_NAME.fullmatch(text)) and text not in (".", "..")
    return legal and not text.startswith("__")


def topic_name(text: str) -> str | None:
    if is_topic_name(text):
        return None
    return "not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -, not starting with __)"


def non_empty(text: str) -> str | None:
    return None if text.strip() else "must not be empty"


def bucket_name(text: str) -> str | None:
    if _BUCKET_NAME.fullmatch(text) and ".." not in text and not _is_ip(text):
        return None
    return "not an S3 bucket name (3-63 of a-z 0-9 . -, starting and ending with a letter or digit)"


def api_version(text: str) -> str | None:
    return None if _API_VERSION.fullmatch(text) else "expected a Graph API version like v21.0"


# An accounts key id: what a sealed value names its key by (accounts/sealing.py). No `:`, the
# separator of `ID:BASE64KEY`.
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}", re.ASCII)
ACCOUNTS_KEY_BYTES = 32  # AES-256


def parse_key_list(text: str) -> list[tuple[str, bytes]]:
    """`ID:BASE64KEY` entries separated by commas (or whitespace: a mounted file may hold one a
    line), each key 32 bytes of standard base64; ValueError says which entry is wrong and why,
    never quoting a key. The first entry seals, every entry opens (accounts/sealing.py)."""
    entries = [entry for entry in re.split(r"[,\s]+", text) if entry]
    if not entries:
        raise ValueError("holds no key")
    keys: list[tuple[str, bytes]] = []
    for n, entry in enumerate(entries, 1):
        key_id, colon, encoded = entry.partition(":")
        if not colon or not _KEY_ID.fullmatch(key_id):
            raise ValueError(f"entry {n}: expected ID:BASE64KEY, ID of 1-32 of A-Z a-z 0-9 _ -")
        try:
            key = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise ValueError(f"entry {n} ({key_id}): the key is not base64") from None
        if len(key) != ACCOUNTS_KEY_BYTES:
            raise ValueError(
                f"entry {n} ({key_id}): the key is {len(key)} bytes, AES-256 takes "
                f"{ACCOUNTS_KEY_BYTES} (chat4all-workers accounts new-key makes one)"
            )
        if any(key_id == known for known, _ in keys):
            raise ValueError(f"entry {n}: key id {key_id} appears twice")
        keys.append((key_id, key))
    return keys


def accounts_keys(text: str) -> str | None:
    """The accounts key setting: empty (no key), or a valid key list (`parse_key_list`)."""
    if not text.strip():
        return None
    try:
        parse_key_list(text)
    except ValueError as exc:
        return str(exc)
    return None


def cron(text: str) -> str | None:
    try:
        Cron.parse(text).next_after(datetime.now(UTC))
    except ValueError as exc:
        return str(exc)
    return None


def host_port(text: str) -> str | None:
    """`host`, `host:port` or `[ipv6]:port`; a `:` needs a port after it."""
    if "://" in text:
        return "expected host:port, without a scheme"
    return _address(text)


def kafka_servers(text: str) -> str | None:
    """A comma-separated list of `host[:port]` (aiokafka refuses a `:` without a port)."""
    entries = [entry.strip() for entry in text.split(",")]
    if not text.strip() or not all(entries):
        return "expected host:port[,host:port...]"
    for entry in entries:
        if "://" in entry:
            return "expected host:port[,host:port...], without a scheme"
        problem = _address(entry)
        if problem:
            return problem
    return None


def http_url(text: str) -> str | None:
    problem = _url_shape(text, ("http", "https"))
    if problem:
        return problem
    parts = urlsplit(text)
    if "@" in parts.netloc:
        return "must not carry credentials"
    return _host_port(parts.netloc)


def http_url_or_empty(text: str) -> str | None:
    return http_url(text) if text else None


def postgres_url(text: str) -> str | None:
    """`postgresql://user:password@host[:port][,host2[:port]]/database[?sslmode=...]`; the host
    may instead be a socket directory in `?host=`."""
    problem = _url_shape(text, ("postgresql", "postgres"))
    if problem:
        return problem
    parts = urlsplit(text)
    query = parse_qs(parts.query)
    hosts = parts.netloc.rpartition("@")[2]
    if hosts:
        for host in hosts.split(","):
            problem = _host_port(host)
            if problem:
                return problem
    elif "host" not in query:
        return "no host (postgresql://user:password@HOST:5432/database)"
    database = unquote(parts.path.removeprefix("/"))
    if not database:
        return "no database name (postgresql://user:password@host:5432/DATABASE)"
    if "/" in parts.path[1:]:
        return "the path must be just /DATABASE"
    sslmode = query.get("sslmode", ["prefer"])[-1]
    if sslmode not in _SSLMODES:
        return f"sslmode must be one of {', '.join(_SSLMODES)}"
    return None


def redis_url(text: str) -> str | None:
    """`redis://[[user]:password@]host[:port][/db]`, `rediss://...` or `unix:///path[?db=N]`."""
    problem = _url_shape(text, ("redis", "rediss", "unix"))
    if problem:
        return problem
    parts = urlsplit(text)
    query = parse_qs(parts.query)
    if parts.scheme.lower() == "unix":
        if not parts.path:
            return "no socket path (unix:///path/to/redis.sock)"
        path_db = ""
    else:
        problem = _host_port(parts.netloc.rpartition("@")[2])
        if problem:
            return problem
        path_db = parts.path.removeprefix("/")
    for db in (path_db, *query.get("db", [])):
        if db and not (db.isascii() and db.isdigit()):
            return "the database number must be a non-negative integer (redis://host:6379/0)"
    return None


def masked_url(text: str) -> str | None:
    """A URL with its password (and credential-like query values) replaced by `***`; the whole
    authority masked when the URL is malformed enough that the password might be anywhere.
    None when `text` is not a URL."""
    scheme, sep, _ = text.partition("://")
    if not sep or not scheme.isalnum():
        return None
    try:
        parts = urlsplit(text)
    except ValueError:
        return f"{scheme}://***"
    if "@" in parts.path + parts.query + parts.fragment:
        return f"{scheme}://***"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        userinfo = f"{user}:***" if colon else user
    netloc = f"{userinfo}{at}{hosts}"
    query = _SECRET_PARAM.sub(r"\1=***", parts.query)
    shown = f"{scheme}://{netloc}{parts.path}"
    return f"{shown}?{query}" if query else shown


def _url_shape(text: str, schemes: tuple[str, ...]) -> str | None:
    scheme, sep, _ = text.partition("://")
    if not sep or scheme.lower() not in schemes:
        return "must start with " + " or ".join(f"{s}://" for s in schemes)
    try:
        parts = urlsplit(text)
    except ValueError:
        return "not a valid URL"
    if "@" in parts.path + parts.query + parts.fragment:
        return f"has {_UNENCODED}"
    return None


def _address(text: str) -> str | None:
    """A bare `host[:port]` (Kafka's servers, the S3 endpoint): a `:` needs a port after it, as
    aiokafka refuses an empty one. In a URL an empty port means the scheme's default (asyncpg,
    redis-py and yarl read it so), so `_host_port` lets it pass."""
    problem = _host_port(text)
    if problem is None and text.endswith(":"):
        return "the port after ':' is empty (give one, or leave out the ':')"
    return problem


def _host_port(text: str) -> str | None:
    try:
        parts = urlsplit(f"//{text}")
    except ValueError:  # a [bracketed] host that is no IP address, or a look-alike of : / ? # @
        return "the host is not a valid address"
    try:
        port = parts.port
    except ValueError:
        return "the port must be a number from 1 to 65535"
    host = parts.hostname or ""
    if port == 0:
        return "the port must be a number from 1 to 65535"
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return "expected host:port"
    if not host:
        return "no host"
    if parts.netloc.startswith("[") and not _is_ip(host):  # an IPvFuture `[v1.x]` gets here
        return "the host is not a valid address"
    if not (_HOSTNAME.fullmatch(host) or _is_ip(host)):
        return "not a valid host name"
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
