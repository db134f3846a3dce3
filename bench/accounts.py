"""Many senders: a backlog spread over many accounts, each at its own pace, through several
routers; next to one account carrying the same messages, in the same run.

    python bench/accounts.py [--whatsapp-accounts 20] [--instagram-accounts 5] [--rate 80]
                             [--messages 30000] [--routers 2] [--expire-s 5] [--phase all]

Runs against the real services (the devstack env), with the real mocks (`whatsapp_mock`,
`instagram_mock` in a process of their own) playing every account: each answers its own token
only and throttles above its own `--rate` (HTTP 400, code 130429 / 613, as Meta answers), with
WhatsApp's pair limit per (account, recipient). The environment's account is one of them (the
`default`); the others are rows of the accounts table (sealed with a key of the run), added
before the routers start. Messages name their account (`account`), `--conversations-per-account`
conversations each (the same conversations in all, whatever the phase's account count),
round-robin, so every account has the same share of the backlog.

(single) every message from ONE account whose limit is the sum of the many accounts' limits:
    what the same work costs through one lane. CPU per message of each process is the baseline;
    its rate is shown, not judged (one lane at the sum of the limits can ask more than the
    machine has: it is the CPU reference, not a pacing test).
(many) the backlog over `--whatsapp-accounts` + `--instagram-accounts` accounts. Targets: every
    message SENT once (the status topic), accepted by the mock once, none dead-lettered, in order
    per conversation; each account's rate, from its first accepted send to its last, at least
    95 % of its limit; throttled answers at most 1 % of the calls. CPU per message per process,
    next to (single).
(expire) as (many), and one WhatsApp account's token expired for `--expire-s` seconds once a
    quarter of the backlog is sent (the mock's `POST /__mock__/token {"account": ...}`). Targets:
    nothing dead-lettered or lost; that account paused and resumed (its messages all SENT);
    every OTHER account's rate at least 95 % of its limit (within 5 %).

Topics, consumer groups, the run's database and Redis keys are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil

from chat4all_workers.accounts.sealing import Keyring, new_key_line
from chat4all_workers.accounts.writer import put_account, put_app

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench.procs import CpuMeter, service_pids  # noqa: E402
from bench.router import (  # noqa: E402
    KAFKA,
    Scratch,
    end_offsets_total,
    free_port,
    in_order,
    read_statuses,
    router_group,
    router_settings,
    scratch,
    spawn,
    stop_spawned,
    until,
)
from harness.topics import produce_documents  # noqa: E402

out = sys.stdout.write
APP = "bench-app"
APP_SECRET = "bench-app-secret"
ENV_TOKEN = "bench"  # router_settings' token of the environment's account


@dataclass(frozen=True)
class Sender:
    """One account as the bench sets it up: the mock plays it, the router sends as it."""

    channel: str
    key: str  # "default" for the environment's account
    provider_id: str
    token: str

    @property
    def ref(self) -> str:
        return f"{self.channel}/{self.key}"


@dataclass
class Phase:
    name: str
    senders: list[Sender]
    rate: float  # each sender's limit
    docs: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    throttled: int = 0
    sent: int = 0
    dlq: int = 0
    seconds: float = 0.0
    expired: str | None = None  # the ref of the account whose token expired
    expired_window: tuple[float, float] = (0.0, 0.0)
    cpu: CpuMeter | None = None


def senders_for(args: argparse.Namespace) -> list[Sender]:
    senders = []
    for channel, count, base in (
        ("whatsapp", args.whatsapp_accounts, 1000),
        ("instagram", args.instagram_accounts, 2000),
    ):
        for n in range(count):
            provider_id = str(base + n)
            if n == 0:
                senders.append(Sender(channel, "default", provider_id, ENV_TOKEN))
            else:
                senders.append(Sender(channel, f"biz{n:03d}", provider_id, f"tok-{provider_id}"))
    return senders


def settings_doc(s: Scratch, phase: Phase, key: str, ports: dict[str, int]) -> dict[str, Any]:
    doc = router_settings(s, phase.name, f"http://127.0.0.1:{ports['whatsapp_port']}", None)
    doc["whatsapp"] |= {"max_rate_per_s": phase.rate, "pair_burst": 45}
    doc["instagram"] = {
        "base_url": f"http://127.0.0.1:{ports['instagram_port']}",
        "access_token": ENV_TOKEN,
        "user_id": "2000",
        "max_rate_per_s": phase.rate,
    }
    doc["accounts"] = {"key": key, "reload_interval_s": 5.0}
    more = {
        sender.provider_id: (
            f"channel={sender.channel} token={sender.token} app={APP} secret={APP_SECRET}"
        )
        for sender in phase.senders
        if sender.key != "default"
    }
    doc["mocks"] = {
        **ports,
        "whatsapp_rate_per_s": phase.rate,
        "instagram_rate_per_s": phase.rate,
        "windows": "open",  # the bench's recipients never wrote first
        "whatsapp_webhook_url": "",  # no webhooks: the routers' cost is measured
        "instagram_webhook_url": "",
        "accounts": more,
    }
    return doc


async def register(database_url: str, keyring: Keyring, senders: list[Sender], rate: float) -> None:
    """The table's accounts (all but the environment's), through the product's writer."""
    conn = await asyncpg.connect(database_url)
    try:
        await put_app(
            conn, keyring, app_id=APP, secret=APP_SECRET, verify_token="bench", replace=True
        )
        for sender in senders:
            if sender.key == "default":
                continue
            await put_account(
                conn,
                keyring,
                channel=sender.channel,
                key=sender.key,
                provider_id=sender.provider_id,
                app_id=APP,
                token=sender.token,
                max_rate_per_s=rate,
                replace=True,
            )
    finally:
        await conn.close()


async def produce(
    topic: str, senders: list[Sender], count: int, conversations: int
) -> list[dict[str, Any]]:
    """`count` messages round-robin over the senders, over `conversations` conversations (one
    recipient each) shared out evenly among them."""
    per_account = max(1, conversations // len(senders))

    def doc(n: int) -> dict[str, Any]:
        index = n % len(senders)
        sender = senders[index]
        conversation = index * per_account + (n // len(senders)) % per_account
        return {
            "message_id": str(uuid.uuid4()),
            "conversation_id": conversation,
            "sender_id": 7,
            "payload": {"type": "text", "content": f"message {n} of {conversation}"},
            "channels": [sender.channel],
            "recipients": {sender.channel: f"+55{conversation:011d}"},
            "account": sender.key,
        }

    return await produce_documents(KAFKA, topic, (doc(n) for n in range(count)))


async def run_phase(args: argparse.Namespace, s: Scratch, phase: Phase, key: str) -> None:
    """Mocks, the accounts, `--routers` routers, the backlog; until the mocks accepted it all."""
    ports = {"whatsapp_port": free_port(), "instagram_port": free_port()}
    doc = settings_doc(s, phase, key, ports)
    s.groups.append(router_group(doc))
    await register(s.database_url, Keyring.parse(key), phase.senders, phase.rate)
    urls = {c: doc[c]["base_url"] for c in ("whatsapp", "instagram")}
    mocks = await spawn(doc, "whatsapp_mock,instagram_mock")
    routers = []
    try:
        async with aiohttp.ClientSession() as http:

            async def get(url: str, path: str) -> Any:
                async with http.get(f"{url}{path}") as response:
                    return await response.json()

            async def accepted_total() -> int:
                stats = [await get(url, "/__mock__/stats") for url in urls.values()]
                return sum(int(stat["accepted"]) for stat in stats)

            routers = list(
                await asyncio.gather(*(spawn(doc, "router") for _ in range(args.routers)))
            )
            await asyncio.sleep(2 * doc["kafka"].get("session_timeout_ms", 10_000) / 1000 / 3)
            conversations = args.conversations_per_account * len(senders_for(args))
            phase.docs = await produce(s.topic("in"), phase.senders, args.messages, conversations)
            pids = {f"router-{n + 1}": r.proc.pid for n, r in enumerate(routers)}
            phase.cpu = CpuMeter({**pids, "mocks": mocks.proc.pid, **service_pids()})
            phase.cpu.start()
            started = time.monotonic()
            total_rate = phase.rate * len(phase.senders)
            deadline = started + args.messages / total_rate * 4 + 120
            if phase.expired is not None:
                victim = next(x for x in phase.senders if x.ref == phase.expired)

                async def a_quarter() -> bool:
                    return await accepted_total() >= int(args.messages) // 4

                await until(a_quarter, deadline)
                token = {"account": victim.provider_id}
                async with http.post(
                    f"{urls[victim.channel]}/__mock__/token", json={**token, "expired": True}
                ):
                    expired_at = time.time()
                await asyncio.sleep(args.expire_s)
                async with http.post(
                    f"{urls[victim.channel]}/__mock__/token", json={**token, "expired": False}
                ):
                    phase.expired_window = (expired_at, time.time())

            async def all_accepted() -> bool:
                return await accepted_total() >= int(args.messages)

            await until(all_accepted, deadline)
            phase.seconds = time.monotonic() - started
            phase.cpu.stop()
            for channel, url in urls.items():
                phase.accepted += [
                    {**a, "channel": channel} for a in await get(url, "/__mock__/sent")
                ]
                stats = await get(url, "/__mock__/stats")
                phase.calls += int(stats["requests"])
                phase.throttled += sum(
                    int(count) for name, count in stats.items() if name.endswith("throttled")
                )
    finally:
        for router in routers:
            await stop_spawned(router)
        await stop_spawned(mocks)
    phase.sent = (await read_statuses(s.topic(f"status-{phase.name}"), s.partitions)).sent_messages
    phase.dlq = await end_offsets_total(s.topic("dlq"), s.partitions)


def account_rates(phase: Phase) -> dict[str, tuple[int, float]]:
    """Per provider id: accepted sends, and the rate from its first accepted send to its last."""
    times: dict[str, list[float]] = defaultdict(list)
    for accepted in phase.accepted:
        times[str(accepted["account"])].append(float(accepted["accepted_at"]))
    rates = {}
    for account, stamps in times.items():
        stamps.sort()
        span = stamps[-1] - stamps[0]
        rates[account] = (len(stamps), (len(stamps) - 1) / span if span > 0 else 0.0)
    return rates


def report(args: argparse.Namespace, phase: Phase, single: Phase | None) -> list[str]:
    """Print the phase's figures and targets; the problems (missed targets)."""
    problems: list[str] = []
    out(f"\n({phase.name}) {len(phase.senders)} account(s) at {phase.rate:g}/s each, "
        f"{args.messages} messages, {args.routers} routers: {phase.seconds:.1f} s\n")  # fmt: skip

    def row(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
        mark = "" if ok is None else ("yes" if ok else "NO")
        out(f"  {label:52} {value:>14} {target:>10} {mark:>4}\n")
        if ok is False:
            problems.append(f"({phase.name}) {label}: {value} (target {target})")

    total = len(phase.docs)
    texts = Counter(a["text"] for a in phase.accepted)
    row("messages SENT (status topic)", f"{phase.sent}/{total}", "all", phase.sent == total)
    row("accepted by the mocks, each once", f"{len(texts)}/{total}", "all",
        len(texts) == total and max(texts.values(), default=1) == 1)  # fmt: skip
    row("dead-lettered", str(phase.dlq), "0", phase.dlq == 0)
    by_channel = {
        c: [a for a in phase.accepted if a["channel"] == c] for c in ("whatsapp", "instagram")
    }
    disordered = 0
    for channel, accepted in by_channel.items():
        mine = [d for d in phase.docs if d["channels"] == [channel]]
        disordered += in_order(sorted(accepted, key=lambda a: a["accepted_at"]), mine)
    row("conversations out of order", str(disordered), "0", disordered == 0)
    share = phase.throttled / max(phase.calls, 1)
    row("throttled answers / calls", f"{phase.throttled}/{phase.calls} {share:.2%}", "<= 1 %",
        share <= 0.01)  # fmt: skip
    rates = account_rates(phase)
    floor = 0.95 * phase.rate
    expired_id = next((x.provider_id for x in phase.senders if x.ref == phase.expired), None)
    judged = {a: r for a, r in rates.items() if a != expired_id}
    slowest = min(judged.items(), key=lambda item: item[1][1]) if judged else ("-", (0, 0.0))
    label = "every account's rate, first to last send (slowest)"
    if phase.expired is not None:
        label = "every OTHER account's rate, first to last (slowest)"
    if phase.name == "single":
        # One lane carrying every account's limit asks more of one machine than the many
        # accounts do (2,000/s through two routers on this 2-core machine ran CPU-bound at
        # about 1,600/s): its rate is shown, not judged; the phase is the CPU reference.
        row(label + ", not judged", f"{slowest[1][1]:.1f}/s ({slowest[0]})")
    else:
        row(label, f"{slowest[1][1]:.1f}/s ({slowest[0]})", f">= {floor:.0f}/s",
            bool(judged) and slowest[1][1] >= floor)  # fmt: skip
    if phase.expired is not None and expired_id is not None:
        _, rate = rates.get(expired_id, (0, 0.0))
        start, end = phase.expired_window
        during = sum(
            1 for a in phase.accepted
            if str(a["account"]) == expired_id and start + 0.5 <= a["accepted_at"] < end
        )  # fmt: skip
        row(f"{phase.expired}: accepted while its token was expired", str(during), "0",
            during == 0)  # fmt: skip
        row(f"{phase.expired}: rate over its whole run (paused {args.expire_s:g} s)",
            f"{rate:.1f}/s")  # fmt: skip
    assert phase.cpu is not None
    out(phase.cpu.report(f"({phase.name}) routers and mocks", total))
    if single is not None and single.cpu is not None:
        many_us = router_cpu_us(phase)
        single_us = router_cpu_us(single)
        row("routers' CPU per message: many accounts / one", f"{many_us:.0f} / {single_us:.0f} µs",
            "", None)  # fmt: skip
        row("  ratio", f"{many_us / single_us:.2f}x")
    return problems


def router_cpu_us(phase: Phase) -> float:
    """The routers' CPU per message, summed over the router processes (µs)."""
    assert phase.cpu is not None
    seconds = sum(v for k, v in phase.cpu.seconds.items() if k.startswith("router"))
    return seconds / max(len(phase.docs), 1) * 1e6


async def bench(args: argparse.Namespace) -> bool:
    senders = senders_for(args)
    key = new_key_line("bench")
    out(
        f"accounts benchmark: {args.whatsapp_accounts} WhatsApp + {args.instagram_accounts} "
        f"Instagram accounts at {args.rate:g}/s each, {args.messages} messages, {args.routers} "
        f"routers, {psutil.cpu_count()} CPUs\n"
    )
    problems: list[str] = []
    single: Phase | None = None
    figures: dict[str, Any] = {}
    phases = ("single", "many", "expire") if args.phase == "all" else (args.phase,)
    for name in phases:
        names = ("in", f"status-{name}", "dlq")
        async with scratch(args.partitions, names) as s:
            if name == "single":
                one = [Sender("whatsapp", "default", "1000", ENV_TOKEN)]
                phase = Phase(name, one, args.rate * len(senders))
            else:
                phase = Phase(name, senders, args.rate)
                if name == "expire":
                    phase.expired = next(x.ref for x in senders if x.key != "default")
            await run_phase(args, s, phase, key)
        problems += report(args, phase, single)
        if name == "single":
            single = phase
        assert phase.cpu is not None
        figures[name] = {
            "seconds": phase.seconds,
            "sent": phase.sent,
            "messages": len(phase.docs),
            "dlq": phase.dlq,
            "calls": phase.calls,
            "throttled": phase.throttled,
            "router_cpu_us_per_message": router_cpu_us(phase),
            "rates": {a: r for a, (_, r) in account_rates(phase).items()},
        }
    for problem in problems:
        out(f"PROBLEM: {problem}\n")
    if not problems:
        out("RESULT: every target met\n")
    if args.json:
        figures["problems"] = problems
        await asyncio.to_thread(Path(args.json).write_bytes, orjson.dumps(figures))
    return not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--whatsapp-accounts", type=int, default=20)
    parser.add_argument("--instagram-accounts", type=int, default=5)
    parser.add_argument("--rate", type=float, default=80.0, help="each account's limit (/s)")
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--conversations-per-account", type=int, default=40)
    parser.add_argument("--routers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--expire-s", type=float, default=5.0)
    parser.add_argument("--phase", choices=("all", "single", "many", "expire"), default="all")
    parser.add_argument("--json", metavar="PATH", help="write the figures there")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        return 0 if asyncio.run(bench(args)) else 1
    return 130


if __name__ == "__main__":
    sys.exit(main())
