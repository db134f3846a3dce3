"""The dashboard and the alerts against a real Prometheus scraping a running pipeline.

Every expression of deploy/grafana/chat4all-workers.json and deploy/prometheus/alerts.yml is read
from those files (a new panel needs no test change) and asked of the devstack Prometheus
(`scripts/devstack up prometheus`) through its HTTP API. Each must return series, and each label
it names (matchers, groupings) or prints (legends, alert annotations) must be one the workers
export. Some series exist only after an event, so the test causes each: dead-lettered records
(router and merge), a paused channel (the WhatsApp mock's token expired for a moment), throttled
answers (the Instagram mock's rate set low), signed webhooks (accepted, a bad signature, shed
with 503 while every slot is held), and a crash (the outbox's table renamed under it) for a
restart. gc's counter needs no pass: it exists, at 0, from the moment the role schedules its
passes. The webhooks' other traffic is the mocks calling back, as Meta would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import yaml
from miniopy_async.api import Minio

from chat4all_workers.meta.notifications import whatsapp_notification
from chat4all_workers.meta.signature import SIGNATURE_HEADER, sign
from harness.deployment import DEV_APP_SECRET, Deployment
from harness.pipeline import Sent
from harness.processes import WorkerProcess, workers_running
from harness.stack import unique_name
from harness.waiting import eventually
from tests.e2e.pipeline import insert_messages, mock_callbacks_pending, statuses, upload_file
from tests.promql import (
    Query,
    alert_queries,
    dashboard_queries,
    label_names,
    metric_names,
    operands,
    template_labels,
)
from tests.stack import DEVSTACK
from tests.support import produce

pytestmark = [pytest.mark.stack, pytest.mark.slow]

JOB = "chat4all-workers"
# What Grafana's $__rate_interval is at devstack's 2 s scrape interval (4 scrapes), rounded up.
RATE_INTERVAL = "10s"
# Labels Prometheus adds to every scraped series (job, instance) and the one the scrape
# configurations add (worker: the compose service, the Kubernetes component, devstack's target).
TARGET_LABELS = {"job", "instance", "worker"}

HELD_SLOTS = 4
FAST: dict[str, dict[str, Any]] = {
    "outbox": {"poll_interval_ms": 200, "pending_refresh_s": 0.5},
    "fallback": {"poll_interval_s": 0.5},
    "router": {"retry_base_s": 0.05, "retry_cap_s": 0.5, "pause_probe_base_s": 0.2},
    # Throttled answers: the Instagram account takes 3 a second (a burst of 3), the router
    # paces it at 250.
    "mocks": {"delivered_after_ms": 50.0, "read_after_ms": 100.0, "instagram_rate_per_s": 3.0},
    # A few slots, so that holding them all sheds a POST with 503.
    # (The app secrets are the deployment's: the mocks sign their callbacks with them too.)
    "webhooks": {"max_concurrent_requests": 4},
    # The outbox crashes on purpose below; it must not take the process down.
    "supervisor": {"max_restarts": 1000, "backoff_base_s": 0.1, "backoff_cap_s": 0.5},
}


@dataclass(frozen=True)
class Prometheus:
    url: str
    targets_dir: Path

    async def get(self, path: str, **params: str) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.url}{path}", params=params) as response,
        ):
            body = await response.json()
        if body["status"] != "success":  # a broken query is a bug, not "no data yet"
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        return list(data["result"])

    async def labels_of(self, metric: str, selector: str) -> set[str]:
        """Every label name on the scraped series of `metric` (within `selector`)."""
        series = await self.get("/api/v1/series", **{"match[]": f"{metric}{{{selector}}}"})
        return {name for s in series for name in s} - {"__name__"}

    @contextlib.contextmanager
    def scraping(self, worker: str, port: int) -> Iterator[None]:
        """Scrape 127.0.0.1:`port` as `worker` (file-based discovery) while inside."""
        path = self.targets_dir / f"{worker}.json"
        tmp = path.with_suffix(".tmp")
        target = {"targets": [f"127.0.0.1:{port}"], "labels": {"worker": worker}}
        tmp.write_text(json.dumps([target]))
        tmp.rename(path)  # whole, never half-written: Prometheus watches the directory
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def prometheus() -> Prometheus:
    """devstack's Prometheus (started if it does not answer), and where it discovers targets:
    read from its loaded configuration, so a Prometheus started from another checkout works."""
    env = subprocess.run(
        [str(DEVSTACK), "env"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    found = re.search(r"PROMETHEUS_URL=(\S+)", env)
    assert found is not None, env
    url = found.group(1)
    if not answers(url):
        up = subprocess.run(
            [str(DEVSTACK), "up", "prometheus"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert up.returncode == 0, up.stderr
    with urllib.request.urlopen(f"{url}/api/v1/status/config", timeout=10) as response:
        config = yaml.safe_load(json.load(response)["data"]["yaml"])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    (pattern,) = job["file_sd_configs"][0]["files"]
    return Prometheus(url, Path(pattern).parent)


async def cause_events(deployment: Deployment, s3: Minio, worker: WorkerProcess) -> None:
    """Traffic, and each event some series wait for."""
    sent = await pause_whatsapp(deployment, worker)
    sent += await insert_messages(deployment, conversations=range(1, 4), per_conversation=3)
    await upload_file(deployment, s3, [b"a" * 1024, b"b" * 512])
    # Dead letters: a router record and a merge request that can never succeed.
    await produce(deployment.stack, deployment.topics["message_processing"], [(b"k", b"{no")])
    await produce(deployment.stack, deployment.topics["file_merge_requests"], [(b"k", b"{no")])

    async def all_read() -> bool:
        return set((await statuses(deployment, [s.message_id for s in sent])).values()) == {"READ"}

    await eventually(all_read, timeout_s=60, interval_s=0.25, message="every message READ")

    async def called_back() -> bool:
        return await mock_callbacks_pending(deployment) == 0

    # Once the mocks have called every status back, so that only these requests hold slots: a
    # message is READ with the first channel's read, the other channel's may still be on its
    # way (a fresh-clone run once lost a held slot to it, and waited for 4 held in vain).
    await eventually(called_back, timeout_s=60, interval_s=0.25, message="every webhook called")
    await webhook_traffic(deployment, worker)
    # A crash: the outbox's table goes away under it (a bad migration would do that), and comes
    # back once the supervisor restarted the role.
    conn = await asyncpg.connect(deployment.database_url)
    try:
        await conn.execute("ALTER TABLE outbox_events RENAME TO outbox_events_parked")
        try:
            await eventually(
                lambda: restarted(worker), timeout_s=30, message="the outbox restarted"
            )
        finally:
            await conn.execute("ALTER TABLE outbox_events_parked RENAME TO outbox_events")
    finally:
        await conn.close()


async def pause_whatsapp(deployment: Deployment, worker: WorkerProcess) -> list[Sent]:
    """The WhatsApp mock's token expires: the next send pauses the channel; it comes back once
    the token does (the probe). That message (returned) is READ like the others in the end."""
    await expire_token(deployment, expired=True)
    try:
        held = await insert_messages(deployment, conversations=[9], per_conversation=1, tag="p")
        await eventually(
            lambda: metric_matches(worker, r'^channel_paused\{[^}]*channel="whatsapp"[^}]*\} 1'),
            timeout_s=30,
            message="whatsapp paused",
        )
    finally:
        await expire_token(deployment, expired=False)
    return held


async def expire_token(deployment: Deployment, *, expired: bool) -> None:
    url = f"http://127.0.0.1:{deployment.whatsapp_port}/__mock__/token"
    async with aiohttp.ClientSession() as http, http.post(url, json={"expired": expired}) as answer:
        assert answer.status == 200


async def webhook_traffic(deployment: Deployment, worker: WorkerProcess) -> None:
    """Signed WhatsApp notifications of users' messages: one with a wrong signature (401), one
    shed (503) while every slot is held by a body still arriving, then the held ones (200)."""
    port = deployment.webhooks_port
    url = f"http://127.0.0.1:{port}/webhooks/whatsapp"
    bodies = [inbound_body(n) for n in range(HELD_SLOTS)]
    held = []
    for body in bodies:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(signed_head(body) + body[:10])
        await writer.drain()
        held.append((reader, writer, body))
    try:
        await eventually(lambda: webhooks_in_flight(worker, HELD_SLOTS), message="every slot held")
        async with aiohttp.ClientSession() as http:
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: "sha256=00"}
            async with http.post(url, data=bodies[0], headers=headers) as answer:
                assert answer.status == 503  # shed before its signature is even looked at
            for _, writer, body in held:  # the held POSTs complete normally
                writer.write(body[10:])
                await writer.drain()
            for reader, _, _ in held:
                assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            async with http.post(url, data=bodies[0], headers=headers) as answer:
                assert answer.status == 401
    finally:
        for _, writer, _ in held:
            writer.close()


def inbound_body(n: int) -> bytes:
    message = {
        "from": f"5511999{n:06d}",
        "id": f"wamid.prometheus-{n}",
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": f"hello {n}"},
    }
    return orjson.dumps(whatsapp_notification(phone_number_id="1000", messages=[message]))


def signed_head(body: bytes) -> bytes:
    return (
        "POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{SIGNATURE_HEADER}: {sign(DEV_APP_SECRET, body)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()


async def webhooks_in_flight(worker: WorkerProcess, count: int) -> bool:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{worker.metrics_port}/readyz") as response,
    ):
        body = await response.json()
    return bool(body["webhooks"]["in_flight"] == count)


async def metric_matches(worker: WorkerProcess, pattern: str) -> bool:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{worker.metrics_port}/metrics") as response,
    ):
        text = await response.text()
    return re.search(pattern, text, re.M) is not None


async def restarted(worker: WorkerProcess) -> bool:
    return await metric_matches(worker, r'^supervisor_restarts_total\{[^}]*role="outbox"')


def for_worker(expr: str, worker: str) -> str:
    """A dashboard expression as Grafana sends it with one worker selected."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$worker", worker)


@dataclass
class Finding:
    where: str
    problem: str


async def check(
    prometheus: Prometheus, query: Query, exprs: list[str], selector: str
) -> list[Finding]:
    """Each of `exprs` (the query, or an alert's operands) returns series; every label the
    query names is on the series of the metrics it reads; every label it prints is on what
    its expression returns."""
    findings = []
    results = []
    for expr in exprs:
        result = await prometheus.query(expr)
        results.append(result)
        if not result:
            findings.append(Finding(query.where, f"no series for {expr!r}"))
    exported = set()
    for metric in metric_names(query.expr):
        exported |= await prometheus.labels_of(metric, selector)
    unknown = label_names(query.expr) - exported
    if unknown and exported:
        findings.append(Finding(query.where, f"names labels no series has: {sorted(unknown)}"))
    if results and results[0]:
        returned = {name for series in results[0] for name in series["metric"]}
        missing = template_labels(query.prints) - returned
        if missing:
            findings.append(
                Finding(query.where, f"prints labels its result lacks: {sorted(missing)}")
            )
    return findings


async def all_findings(prometheus: Prometheus, worker: str) -> list[Finding]:
    findings: list[Finding] = []
    for query in dashboard_queries():
        expr = for_worker(query.expr, worker)
        findings += await check(prometheus, query, [expr], f'worker="{worker}"')
    for query in alert_queries():
        findings += await check(prometheus, query, operands(query.expr), f'job="{JOB}"')
    return findings


async def test_every_panel_and_alert_returns_series_with_exported_labels(
    deployment: Deployment, s3_client: Minio, tmp_path: Path, prometheus: Prometheus
) -> None:
    worker = unique_name("worker")
    findings: list[Finding] = []

    async def nothing_missing() -> bool:
        findings[:] = await all_findings(prometheus, worker)
        return not findings

    groups = ["all,whatsapp_mock,instagram_mock"]
    async with workers_running(deployment, tmp_path, groups, **FAST) as (proc,):
        with prometheus.scraping(worker, proc.metrics_port):
            await cause_events(deployment, s3_client, proc)
            # On time-out the findings say what is missing (query errors are RuntimeErrors).
            with contextlib.suppress(AssertionError):
                await eventually(nothing_missing, timeout_s=90, interval_s=2, message="series")

    assert [f"{f.where}: {f.problem}" for f in findings] == []
