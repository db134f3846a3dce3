"""Each setting check: what it accepts, what it refuses and how it says so (config_checks.py).

The URL and address checks read secrets, so none of their answers may quote the value or any
part of it: the refusals below carry a recognisable user, password and host and the answers are
searched for each.
"""

from __future__ import annotations

import re

import pytest

from chat4all_workers import config_checks as checks

USER = "usr7Qk"
PASSWORD = "pw-0xDEADBEEF"
HOST = "hst9Zq"


# -- Kafka topic names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["messages", "chat4all.message-events_v2", "a", "A.B-c_9", "_private", "x" * 249, "..."],
)
def test_topic_name_accepts_kafkas_names(name: str) -> None:
    assert checks.is_topic_name(name)
    assert checks.topic_name(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "x" * 250,
        "a b",
        "a/b",
        "a:b",
        "tópico",
        "__consumer_offsets",
        "__transaction_state",
        "__anything",
    ],
)
def test_topic_name_refuses_illegal_and_internal_names(name: str) -> None:
    assert not checks.is_topic_name(name)
    assert checks.topic_name(name) == (
        "not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -, not starting with __)"
    )


# -- plain values -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["x", " x ", "0"])
def test_non_empty_accepts_text_with_a_visible_character(text: str) -> None:
    assert checks.non_empty(text) is None


@pytest.mark.parametrize("text", ["", " ", "\t\n"])
def test_non_empty_refuses_empty_or_blank_text(text: str) -> None:
    assert checks.non_empty(text) == "must not be empty"


@pytest.mark.parametrize("name", ["abc", "chat4all-files", "a.b-c", "1bucket9", "a" * 63])
def test_bucket_name_accepts_s3_names(name: str) -> None:
    assert checks.bucket_name(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "ab",
        "a" * 64,
        "Bad_Bucket",
        "Upper",
        "under_score",
        "-abc",
        "abc-",
        ".abc",
        "abc.",
        "a..b",
        "192.168.0.1",
        "10.0.0.255",
        "",
    ],
)
def test_bucket_name_refuses_what_s3_refuses(name: str) -> None:
    assert checks.bucket_name(name) == (
        "not an S3 bucket name (3-63 of a-z 0-9 . -, starting and ending with a letter or digit)"
    )


@pytest.mark.parametrize("version", ["v21.0", "v1.0", "v123.456"])
def test_api_version_accepts_graph_versions(version: str) -> None:
    assert checks.api_version(version) is None


@pytest.mark.parametrize("version", ["21.0", "v21", "V21.0", "v21.0.1", "v1234.0", "v21.x", ""])
def test_api_version_refuses_anything_else(version: str) -> None:
    assert checks.api_version(version) == "expected a Graph API version like v21.0"


# -- cron ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("expression", ["0 3 * * *", "*/5 * * * 1-5", "0 0 29 2 *"])
def test_cron_accepts_an_expression_that_fires(expression: str) -> None:
    assert checks.cron(expression) is None


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("99 * * * *", "cron minute field '99' is outside 0-59"),
        ("0 3 * *", "cron needs 5 fields, got 4"),
        ("0 3 * * mon", "cron day of week field 'mon' is not a number or range"),
        ("0 0 30 2 *", "cron never fires (no date matches it)"),
    ],
)
def test_cron_names_the_problem_of_a_bad_expression(expression: str, problem: str) -> None:
    assert checks.cron(expression) == problem


# -- host:port ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "kafka",
        "kafka:9092",
        "kafka-0.kafka.svc:9092",
        "10.0.0.1:1",
        "[::1]:65535",
        "[::1]",
        "k_1:2",
    ],
)
def test_host_port_accepts_host_and_optional_port(address: str) -> None:
    assert checks.host_port(address) is None


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("http://kafka:9092", "expected host:port, without a scheme"),
        ("kafka:0", "the port must be a number from 1 to 65535"),
        ("kafka:65536", "the port must be a number from 1 to 65535"),
        ("kafka:port", "the port must be a number from 1 to 65535"),
        ("kafka:-1", "the port must be a number from 1 to 65535"),
        ("", "no host"),
        (":9092", "no host"),
        ("kafka:9092/x", "expected host:port"),
        ("kafka:9092?x=1", "expected host:port"),
        ("user@kafka:9092", "expected host:port"),
        ("bad host:1", "not a valid host name"),
        ("-kafka:1", "not a valid host name"),
        ("kafka-:1", "not a valid host name"),
    ],
)
def test_host_port_refuses_a_bad_address(address: str, problem: str) -> None:
    assert checks.host_port(address) == problem


@pytest.mark.parametrize("address", ["kafka:", "10.0.0.1:", "[::1]:"])
def test_host_port_refuses_a_colon_without_a_port(address: str) -> None:
    assert checks.host_port(address) == (
        "the port after ':' is empty (give one, or leave out the ':')"
    )


@pytest.mark.parametrize("address", ["[notip]:1", "[notip]", "[::1:1", "[v1.x]:1", "k\uff1a1"])
def test_host_port_says_the_host_is_wrong_when_it_is_not_an_address(address: str) -> None:
    assert checks.host_port(address) == "the host is not a valid address"  # not the port


@pytest.mark.parametrize("servers", ["k:9092", "k1:9092,k2:9093", " k1:9092 , k2 ", "[::1]:9092"])
def test_kafka_servers_accepts_a_list_of_addresses(servers: str) -> None:
    assert checks.kafka_servers(servers) is None


@pytest.mark.parametrize(
    ("servers", "problem"),
    [
        ("", "expected host:port[,host:port...]"),
        (" ", "expected host:port[,host:port...]"),
        ("k1:9092,,k2:9092", "expected host:port[,host:port...]"),
        ("k1:9092,", "expected host:port[,host:port...]"),
        ("k1:9092,PLAINTEXT://k2:9092", "expected host:port[,host:port...], without a scheme"),
        ("k1:9092,k2:0", "the port must be a number from 1 to 65535"),
        ("k1:9092,k 2:1", "not a valid host name"),
        ("k1:", "the port after ':' is empty (give one, or leave out the ':')"),
        ("k1:9092,k2:", "the port after ':' is empty (give one, or leave out the ':')"),
        ("k1:9092,[k2]:9092", "the host is not a valid address"),
    ],
)
def test_kafka_servers_refuses_a_bad_entry_anywhere_in_the_list(servers: str, problem: str) -> None:
    assert checks.kafka_servers(servers) == problem


# -- HTTP URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://graph.facebook.com",
        "http://127.0.0.1:8080/mock",
        "HTTPS://Graph.Facebook.com/v21.0?x=1",
        "http://[::1]:9/",
    ],
)
def test_http_url_accepts_http_and_https(url: str) -> None:
    assert checks.http_url(url) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("graph.facebook.com", "must start with http:// or https://"),
        ("ftp://host/file", "must start with http:// or https://"),
        ("http:/host", "must start with http:// or https://"),
        ("http://", "no host"),
        ("http://host:0/", "the port must be a number from 1 to 65535"),
        ("http://[::1/", "not a valid URL"),
        (f"http://{USER}:{PASSWORD}@{HOST}/", "must not carry credentials"),
        (f"http://{HOST}/x?u={USER}@{PASSWORD}", "has an unencoded @, /, ? or #"),
    ],
)
def test_http_url_refuses_a_bad_url(url: str, problem: str) -> None:
    assert (checks.http_url(url) or "").startswith(problem)


def test_http_url_or_empty_accepts_nothing_at_all() -> None:
    assert checks.http_url_or_empty("") is None


def test_http_url_or_empty_still_checks_a_given_url() -> None:
    assert checks.http_url_or_empty("host:80") == "must start with http:// or https://"


# -- PostgreSQL DSNs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://{USER}:{PASSWORD}@{HOST}:5432/chat4all",
        f"postgres://{USER}@{HOST}/chat4all",
        "postgresql://u@db1:5432,db2:5433/app?sslmode=verify-full",
        "postgresql:///app?host=/run/postgresql",
        "postgresql://u:p%40ss@[::1]:5432/app",
        "postgresql://u@h/a%2Fb",  # an encoded / belongs to the name
        "postgresql://u:a:b@h/app",  # a : in the password needs no encoding
        "postgresql://u:a@b@h/app",  # nor an @: the last one ends the password, as in asyncpg
        "postgresql://h/app?sslmode=disable",
    ],
)
def test_postgres_url_accepts_the_dsns_asyncpg_reads(url: str) -> None:
    assert checks.postgres_url(url) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"mysql://{USER}:{PASSWORD}@{HOST}/db", "must start with postgresql:// or postgres://"),
        (f"{HOST}:5432/db", "must start with postgresql:// or postgres://"),
        (f"postgresql://{USER}:{PASSWORD}@/db", "no host (postgresql://user:password@HOST"),
        (f"postgresql://{USER}:{PASSWORD}@{HOST}", "no database name"),
        (f"postgresql://{USER}:{PASSWORD}@{HOST}/", "no database name"),
        (f"postgresql://{USER}:{PASSWORD}@{HOST}/db/x", "the path must be just /DATABASE"),
        (f"postgresql://{USER}:{PASSWORD}@{HOST}:99999/db", "the port must be a number"),
        (f"postgresql://{USER}:{PASSWORD}@{HOST}:5432,:1/db", "no host"),
        (f"postgresql://{USER}:{PASSWORD}@{HOST}/db?sslmode=on", "sslmode must be one of"),
        (f"postgresql://{USER}:{PASSWORD}/x@{HOST}/db", "has an unencoded @, /, ? or #"),
        (f"postgresql://{USER}:{PASSWORD}?@{HOST}/db", "has an unencoded @, /, ? or #"),
        (f"postgresql://{USER}:{PASSWORD}#@{HOST}/db", "has an unencoded @, /, ? or #"),
    ],
)
def test_postgres_url_refuses_a_bad_dsn(url: str, problem: str) -> None:
    assert (checks.postgres_url(url) or "").startswith(problem)


def test_postgres_url_the_last_sslmode_counts() -> None:
    assert checks.postgres_url("postgresql://h/db?sslmode=bogus&sslmode=require") is None
    assert checks.postgres_url("postgresql://h/db?sslmode=require&sslmode=bogus") is not None


# -- Redis URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        f"redis://{USER}:{PASSWORD}@{HOST}:6379/15",
        f"rediss://:{PASSWORD}@{HOST}:6380",
        "redis://cache",
        "redis://cache/3?db=3",
        "unix:///run/redis.sock",
        "unix:///run/redis.sock?db=2",
    ],
)
def test_redis_url_accepts_redis_rediss_and_unix(url: str) -> None:
    assert checks.redis_url(url) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"http://:{PASSWORD}@{HOST}:6379", "must start with redis:// or rediss:// or unix://"),
        ("redis://", "no host"),
        (f"redis://:{PASSWORD}@{HOST}:0/0", "the port must be a number from 1 to 65535"),
        (f"redis://:{PASSWORD}@{HOST}:6379/x", "the database number must be a non-negative"),
        (f"redis://:{PASSWORD}@{HOST}:6379/0?db=-1", "the database number must be a non-negative"),
        ("unix://", "no socket path (unix:///path/to/redis.sock)"),
        ("unix:///run/redis.sock?db=x", "the database number must be a non-negative"),
        (f"redis://:{PASSWORD}/x@{HOST}:6379", "has an unencoded @, /, ? or #"),
        (f"redis://:{PASSWORD}@bad host:6379", "not a valid host name"),
    ],
)
def test_redis_url_refuses_a_bad_url(url: str, problem: str) -> None:
    assert (checks.redis_url(url) or "").startswith(problem)


# -- never quoting the value --------------------------------------------------------------------

# Every URL and address check, each with values it refuses; each value carries the secret parts.
_REFUSED = [
    (checks.postgres_url, f"postgresql://{USER}:{PASSWORD}@{HOST}:nope/db"),
    (checks.postgres_url, f"postgresql://{USER}:{PASSWORD}@{HOST}/db?sslmode={PASSWORD}"),
    (checks.postgres_url, f"postgresql://{USER}:{PASSWORD}/@{HOST}/db"),
    (checks.postgres_url, f"postgresql://{USER}:{PASSWORD}@{HOST} x/db"),
    (checks.postgres_url, f"{USER}:{PASSWORD}@{HOST}/db"),
    (checks.postgres_url, f"postgresql://{USER}:{PASSWORD}@[{HOST}]/db"),
    (checks.redis_url, f"redis://{USER}:{PASSWORD}@{HOST}:nope/0"),
    (checks.redis_url, f"redis://{USER}:{PASSWORD}@{HOST}:6379/{PASSWORD}"),
    (checks.redis_url, f"redis://{USER}:{PASSWORD}#@{HOST}:6379/0"),
    (checks.redis_url, f"unix:///{HOST}?db={PASSWORD}"),
    (checks.redis_url, f"{PASSWORD}"),
    (checks.http_url, f"http://{USER}:{PASSWORD}@{HOST}/"),
    (checks.http_url, f"http://{HOST}:{PASSWORD}/"),
    (checks.http_url, f"http://[{PASSWORD}/"),
    (checks.host_port, f"{USER}:{PASSWORD}@{HOST}:1"),
    (checks.host_port, f"{HOST}:{PASSWORD}"),
    (checks.host_port, f"[{HOST}]:1"),
    (checks.host_port, f"{PASSWORD}:"),
    (checks.kafka_servers, f"{HOST}:1,{USER}:{PASSWORD}@{HOST}"),
    (checks.kafka_servers, f"sasl://{USER}:{PASSWORD}@{HOST}:9092"),
]


@pytest.mark.parametrize(("check", "value"), _REFUSED)
def test_url_checks_never_quote_the_value(check: checks.Check, value: str) -> None:
    problem = check(value)

    assert problem is not None
    for part in (USER, PASSWORD, HOST, "DEADBEEF"):
        assert part.lower() not in problem.lower()


# -- masked_url ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://{USER}:{PASSWORD}@{HOST}:5432/db",
            f"postgresql://{USER}:***@{HOST}:5432/db",
        ),
        (f"redis://:{PASSWORD}@{HOST}:6379/2", f"redis://:***@{HOST}:6379/2"),
        (f"redis://{USER}@{HOST}/0", f"redis://{USER}@{HOST}/0"),
        (f"https://{HOST}/x", f"https://{HOST}/x"),
        (f"postgresql://{HOST}/db?password={PASSWORD}", f"postgresql://{HOST}/db?password=***"),
        (
            f"postgresql://{HOST}/db?sslmode=require&PassWord={PASSWORD}&x=1",
            f"postgresql://{HOST}/db?sslmode=require&PassWord=***&x=1",
        ),
        (f"x://{HOST}/?api_token={PASSWORD}", f"x://{HOST}/?api_token=***"),
        (f"x://{HOST}/?client_secret={PASSWORD}", f"x://{HOST}/?client_secret=***"),
        (f"x://{HOST}/?passfile=a=b", f"x://{HOST}/?passfile=***"),
        (f"postgresql://{USER}:{PASSWORD}@{HOST}/db#frag", f"postgresql://{USER}:***@{HOST}/db"),
        (f"postgresql://{USER}:{PASSWORD}/x@{HOST}/db", "postgresql://***"),
        (f"redis://:{PASSWORD}#@{HOST}:6379/0", "redis://***"),
        (f"http://[{PASSWORD}", "http://***"),
    ],
)
def test_masked_url_shows_all_but_the_secrets(url: str, shown: str) -> None:
    masked = checks.masked_url(url)

    assert masked == shown
    assert PASSWORD not in masked


@pytest.mark.parametrize("text", [PASSWORD, "", "host:5432", "://x", "git+ssh://u:p@h/x"])
def test_masked_url_is_none_for_what_is_not_a_url(text: str) -> None:
    assert checks.masked_url(text) is None


def test_masked_url_keeps_query_values_that_are_not_credentials() -> None:
    masked = checks.masked_url("postgresql://h/db?application_name=worker&sslmode=verify-full")

    assert masked == "postgresql://h/db?application_name=worker&sslmode=verify-full"
    assert not re.search(r"\*\*\*", masked or "")
