"""The processes a benchmark starts or shares: stopping them, and measuring their memory and CPU.

RSS is sampled from a thread, so a busy event loop in the benchmark cannot skew the samples; CPU
is read from the kernel's counters at the start and end of a phase.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import psutil


async def read_line(proc: asyncio.subprocess.Process, prefix: str, timeout_s: float) -> str:
    """The first line of the process's stdout that starts with `prefix` (e.g. READY, DONE)."""
    assert proc.stdout is not None
    async with asyncio.timeout(timeout_s):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise RuntimeError(f"subprocess exited ({await proc.wait()}) before {prefix}")
            if line.startswith(prefix):
                return line.strip()


async def stop_process(proc: asyncio.subprocess.Process, grace_s: float = 30.0) -> None:
    """SIGTERM (the worker drains), then SIGKILL after `grace_s`."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace_s):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


class RssSampler:
    """RSS of a process every `interval_s` while entered, plus once on entry and once on exit."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: list[int] = []

    def rss(self) -> int:
        """Now; 0 once the process is gone."""
        try:
            return int(self._process.memory_info().rss)
        except psutil.NoSuchProcess:
            return 0

    def _sample(self) -> None:
        if rss := self.rss():
            self.samples.append(rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval_s)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


class CpuMeter:
    """CPU seconds (user + system) each named process spends between `start` and `stop`.

    The ratios depend on how the machine's cores are shared: the router, the fake provider,
    Kafka and Redis all run here. Per-message CPU of each says where the time goes, and whether
    a rate is possible at all on this many cores.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._started: dict[str, tuple[float, float]] = {}
        self._wall = 0.0
        self.seconds: dict[str, float] = {}
        self.system: dict[str, float] = {}  # of `seconds`, those in the kernel
        self.wall_s = 0.0

    def _cpu(self, process: psutil.Process) -> tuple[float, float]:
        """(user + system, system) seconds so far."""
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            return 0.0, 0.0
        return float(times.user + times.system), float(times.system)

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._started = {name: self._cpu(p) for name, p in self._processes.items()}

    def stop(self) -> None:
        self.wall_s = time.perf_counter() - self._wall
        for name, process in self._processes.items():
            (cpu, system), (cpu0, system0) = self._cpu(process), self._started[name]
            self.seconds[name], self.system[name] = cpu - cpu0, system - system0

    @classmethod
    def total(cls, meters: list[CpuMeter]) -> CpuMeter:
        """The CPU and wall time of `meters` (stopped), added up per process name."""
        total = cls({})
        for meter in meters:
            total.wall_s += meter.wall_s
            for name, seconds in meter.seconds.items():
                total.seconds[name] = total.seconds.get(name, 0.0) + seconds
                total.system[name] = total.system.get(name, 0.0) + meter.system.get(name, 0.0)
        return total

    def report(self, label: str, messages: int) -> str:
        """Each process's CPU per message, how busy they kept the machine, and the busiest
        process's share of one core: each process runs one event loop on one core, so a
        process near 100 % is what bounds the rate, whichever it is. (On 2026-12-07 the fake
        provider was the library floor's busiest process in all 40 turns of (a) and (b), at
        69-93 % of a core, and the router the router's: the rate ratio of the two compares
        different bottlenecks. README, "Figures".) Each figure gives the kernel's part of it
        in brackets: the router's and its floor's were about a tenth that evening."""
        us = {
            n: (s / messages * 1e6, self.system[n] / messages * 1e6)
            for n, s in self.seconds.items()
        }
        per = ", ".join(f"{n} {cpu:,.0f} (kernel {kernel:,.0f})" for n, (cpu, kernel) in us.items())
        busy = sum(self.seconds.values()) / (self.wall_s * (psutil.cpu_count() or 1))
        busiest = max(self.seconds, key=self.seconds.__getitem__, default=None)
        bound = (
            f"; busiest: {busiest} at {self.seconds[busiest] / self.wall_s:.0%} of one core"
            if busiest is not None and self.wall_s > 0
            else ""
        )
        return (
            f"    {label} CPU per message (us): {per}; these processes kept "
            f"{busy:.0%} of the {psutil.cpu_count()} CPUs busy over {self.wall_s:.1f} s{bound}\n"
        )


def service_pids() -> dict[str, int]:
    """The local Kafka broker and Redis server, when they run on this machine."""
    found: dict[str, int] = {}
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if "kafka.Kafka" in cmdline:
            found.setdefault("kafka", process.pid)
        elif process.info["name"] == "redis-server" or cmdline.startswith("redis-server"):
            found.setdefault("redis", process.pid)
    return found
