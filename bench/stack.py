"""The real stack the benchmark runs against, started (and stopped) by the harness itself.

Its parts are the tests' (tests/helpers): the Temporal dev server (`start_local`), an
embedded PostgreSQL, the panel writer, worker processes (`python worker.py` or
`python -m bench.baseline`) configured only by what the benchmark passes. Its own are
an SMTP sink that indexes confirmation codes by domain, a counter of client calls, and
a CPU meter that says which process spent the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from temporalio.client import Client, Interceptor, OutboundInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from bajas.config import Settings
from bajas.dev.mailsink import MailSink, SunkMessage
from tests.helpers.mail import CODE_RE, MailServer, serving_mail
from tests.helpers.panel import Panel, ServiceFixture
from tests.helpers.processes import Postgres, WorkerProcess, migrated_pool, worker_env
from tests.helpers.temporal import start_local

CODE_SUBJECT = "Código de confirmación para la baja de "
EXPIRES_ON = date(2099, 6, 15)


# --- the SMTP sink ---------------------------------------------------------------------


@dataclass
class CodeSink(MailSink):
    """The project's sink, plus an index domain -> latest code that a coroutine can await.

    aiosmtpd runs `handle_DATA` on its own thread and loop; waiters live on the
    benchmark's loop and are woken with `call_soon_threadsafe`.
    """

    codes: dict[str, str] = field(default_factory=dict)
    notices: int = 0
    keep: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waiters: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[str]]] = field(
        default_factory=dict
    )

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        answer = await super().handle_DATA(server, session, envelope)
        message = self.messages[-1]
        if not self.keep:
            self.messages.clear()
        self._index(message)
        return answer

    def _index(self, message: SunkMessage) -> None:
        subject = message.subject
        if not subject.startswith(CODE_SUBJECT):
            with self._lock:
                self.notices += 1
            return
        domain = subject[len(CODE_SUBJECT) :].strip()
        match = CODE_RE.search(message.body)
        if match is None:
            return
        with self._lock:
            self.codes[domain] = match.group(1)
            waiter = self._waiters.pop(domain, None)
        if waiter is not None:
            loop, future = waiter
            loop.call_soon_threadsafe(_resolve, future, match.group(1))

    async def code_for(self, domain: str, timeout: float = 60.0) -> str:
        loop = asyncio.get_running_loop()
        with self._lock:
            if domain in self.codes:
                return self.codes[domain]
            future: asyncio.Future[str] = loop.create_future()
            self._waiters[domain] = (loop, future)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            with self._lock:
                self._waiters.pop(domain, None)


def _resolve(future: asyncio.Future[str], code: str) -> None:
    if not future.done():
        future.set_result(code)


# --- panel rows and their files ---------------------------------------------------------


async def verify_cancelled(pool: asyncpg.Pool, sites: list[ServiceFixture]) -> dict[str, int]:
    """What the contract promises after a completed cancellation, counted."""
    ids = [s.service_id for s in sites]
    cancelled = await pool.fetchval(
        "select count(*) from services where id = any($1::bigint[])"
        " and status = 'cancelled' and cancelled_at is not null and not auto_renew",
        ids,
    )
    boxes_left = await pool.fetchval(
        "select count(*) from mailboxes where service_id = any($1::bigint[])"
        " and deleted_at is null",
        ids,
    )

    def on_disk() -> int:
        left = 0
        for site in sites:
            left += site.document_root is not None and os.path.lexists(site.document_root)
            left += sum(os.path.lexists(m) for m in site.maildirs)
        return left

    return {
        "services": len(sites),
        "cancelled": int(cancelled),
        "mailboxes_left": int(boxes_left),
        "paths_left_on_disk": await asyncio.to_thread(on_disk),
    }


def per_dir(files: int, dirs: int) -> int:
    """Files per folder that spread `files` evenly over `dirs` folders."""
    return max(1, -(-files // max(1, dirs)))


def status_kib(pid: int, key: str = "VmRSS") -> int:
    """A line of /proc/<pid>/status, in KiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/{pid}/status")


# --- what the client asks of the server -----------------------------------------------------


class CallCounter(Interceptor):
    """Counts the client's calls by kind, so a run can say how many queries a
    cancellation cost (CancellationClient.request polls the `status` query)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _Counting(next, self.counts)

    def take(self) -> dict[str, int]:
        out = dict(self.counts)
        self.counts.clear()
        return out


class _Counting(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, counts: Counter[str]) -> None:
        super().__init__(next)
        self.counts = counts

    async def start_workflow(self, input: Any) -> Any:
        self.counts["start_workflow"] += 1
        return await super().start_workflow(input)

    async def query_workflow(self, input: Any) -> Any:
        self.counts["query"] += 1
        return await super().query_workflow(input)

    async def signal_workflow(self, input: Any) -> None:
        self.counts["signal"] += 1
        await super().signal_workflow(input)

    async def start_workflow_update(self, input: Any) -> Any:
        self.counts["update"] += 1
        return await super().start_workflow_update(input)

    async def describe_workflow(self, input: Any) -> Any:
        self.counts["describe"] += 1
        return await super().describe_workflow(input)


class Profiler:
    """`py-spy record` on a running process; collapsed stacks (flamegraph input) on stop."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.written: list[str] = []

    def attach(self, pid: int, name: str, *, threads: bool = False) -> None:
        if self.folder is None:
            return
        spy = shutil.which("py-spy")
        if spy is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        self.folder.mkdir(parents=True, exist_ok=True)
        out = self.folder / f"profile-{name}.txt"
        argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200"]
        argv += ["--output", str(out), "--nonblocking"]
        if threads:
            argv.append("--threads")
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.running.append((proc, out))

    async def detach(self) -> None:
        for proc, out in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
            if out.exists():
                self.written.append(str(out))
        self.running.clear()


class CpuMeter:
    """CPU seconds per component (process group) between `start()` and `stop()`.

    The machine's busy time is measured too; what none of our processes spent is
    "other" (the machine is shared).
    """

    def __init__(self, groups: Callable[[], dict[str, list[int]]]) -> None:
        self.groups = groups
        self._before: dict[int, float] = {}
        self._machine = 0.0
        self._wall = 0.0

    @staticmethod
    def _cpu(pid: int) -> float | None:
        try:
            t = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return float(t.user + t.system)

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    def _pids(self) -> dict[str, list[int]]:
        return self.groups()

    def start(self) -> None:
        self._before = {}
        for pids in self._pids().values():
            for pid in pids:
                cpu = self._cpu(pid)
                if cpu is not None:
                    self._before[pid] = cpu
        self._machine = self._busy()
        self._wall = time.perf_counter()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        out: dict[str, float] = {}
        for name, pids in self._pids().items():
            spent = 0.0
            for pid in pids:
                cpu = self._cpu(pid)
                if cpu is not None:
                    spent += cpu - self._before.get(pid, 0.0)
            out[name] = round(spent, 3)
        machine = self._busy() - self._machine
        out["other (kernel, other users)"] = round(max(0.0, machine - sum(out.values())), 3)
        out["machine busy"] = round(machine, 3)
        out["wall"] = round(wall, 3)
        out["cores"] = float(psutil.cpu_count() or 1)
        return out


# --- the whole stack ---------------------------------------------------------------------


@dataclass
class Stack:
    workdir: Path
    env: WorkflowEnvironment
    pg: Postgres
    pool: asyncpg.Pool
    mail: MailServer[CodeSink]
    settings: Settings
    panel: Panel
    calls: CallCounter
    counted: Client
    profiler: Profiler
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def sink(self) -> CodeSink:
        return self.mail.sink

    @property
    def hosting_root(self) -> Path:
        return self.settings.hosting_root

    @property
    def client(self) -> Client:
        """The benchmark's client: pydantic converter, calls counted."""
        return self.counted

    @property
    def temporal_address(self) -> str:
        return self.env.client.service_client.config.target_host

    async def sites(self, count: int, *, files: int, mailboxes: int) -> list[ServiceFixture]:
        """`count` services with their files and mailboxes, every other one paid by debit."""

        async def paid_by(method: str, n: int) -> list[ServiceFixture]:
            return await self.panel.services(
                n,
                expires_on=EXPIRES_ON,
                payment_method=method,
                files=files,
                per_dir=10,
                mailboxes=mailboxes,
            )

        debit = await paid_by("auto_debit", -(-count // 2))
        manual = await paid_by("manual", count // 2)
        return [s for pair in zip(debit, manual, strict=False) for s in pair] + debit[len(manual) :]

    async def filler(self, count: int) -> None:
        """Other services (no files on disk) so the safety checks see a panel of this size."""
        await self.panel.services(count, files=0, mailboxes=0, invoices=False, on_disk=False)

    async def bare_service(self, document_root: Path) -> ServiceFixture:
        """One service with a document root and no mailboxes (the deletion benchmark)."""
        (site,) = await self.panel.services(
            1, document_root=document_root, mailboxes=0, invoices=False
        )
        return site

    def temporal_pids(self) -> list[int]:
        me = psutil.Process()
        return [
            p.pid
            for p in me.children(recursive=True)
            if p.pid not in {w.pid for w in self.workers if w.proc is not None}
            and _name(p).startswith("temporal")
        ]

    def postgres_pids(self) -> list[int]:
        pid = self.pg.pid
        if pid is None:
            return []
        try:
            master = psutil.Process(pid)
            return [pid] + [c.pid for c in master.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_groups(self) -> dict[str, list[int]]:
        return {
            "temporal dev server": self.temporal_pids(),
            "postgresql": self.postgres_pids(),
            "workers": [w.pid for w in self.workers if w.alive()],
            "bench client + smtp sink": [os.getpid()],
        }

    def meter(self) -> CpuMeter:
        return CpuMeter(self.cpu_groups)

    async def start_workers(
        self,
        task_queue: str,
        count: int = 1,
        *,
        baseline: bool = False,
        timeout: float = 60.0,
        profile: str | None = None,
    ) -> list[WorkerProcess]:
        """`count` processes of `python worker.py` (or the baseline worker), polling."""
        argv = (
            [sys.executable, "-m", "bench.baseline"] if baseline else [sys.executable, "worker.py"]
        )
        env = worker_env(
            self.settings.model_copy(update={"temporal_task_queue": task_queue}),
            self.temporal_address,
        )
        started = []
        for _ in range(count):
            name = f"{'baseline' if baseline else 'worker'}-{len(self.workers)}"
            w = WorkerProcess(env, self.workdir / f"{name}.log", name, argv=argv)
            self.workers.append(w)
            started.append(w)
        await asyncio.gather(*(w.start_ready(timeout) for w in started))
        if profile:
            for i, w in enumerate(started):
                self.profiler.attach(w.pid, f"{profile}-worker{i}")
        return started

    async def stop_workers(self, workers: list[WorkerProcess] | None = None) -> None:
        targets = list(self.workers if workers is None else workers)
        await asyncio.gather(*(asyncio.to_thread(w.stop, 45.0) for w in targets))
        await self.profiler.detach()
        for w in targets:
            self.workers.remove(w)


def _name(p: psutil.Process) -> str:
    try:
        return str(p.name())
    except psutil.Error:
        return ""


@contextlib.contextmanager
def _stdout_to(path: Path) -> Iterator[None]:
    """Point file descriptor 1 at `path` while a child is spawned (the dev server prints
    a banner there), then give it back."""
    sys.stdout.flush()
    saved = os.dup(1)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(target)


@contextlib.asynccontextmanager
async def open_stack(
    workdir: Path | None = None, *, keep: bool = False, profile_dir: Path | None = None
) -> AsyncIterator[Stack]:
    """Start everything; stop everything (and delete the work directory unless `keep`)."""
    base = workdir or Path(tempfile.mkdtemp(prefix="bajas-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    hosting_root, mail_root = base / "www", base / "mail"
    hosting_root.mkdir(exist_ok=True)
    mail_root.mkdir(exist_ok=True)
    async with contextlib.AsyncExitStack() as stop:
        if not keep and workdir is None:
            stop.push_async_callback(asyncio.to_thread, shutil.rmtree, base, True)
        pg = await asyncio.to_thread(Postgres, base / "pg")
        stop.push_async_callback(asyncio.to_thread, pg.cleanup)
        pool = await migrated_pool(pg.url, max_size=20)
        stop.push_async_callback(pool.close)
        mail = stop.enter_context(serving_mail(CodeSink()))
        with _stdout_to(base / "temporal.log"):
            env = await start_local()
        stop.push_async_callback(env.shutdown)
        # Bajas settings in the shell (WORKFLOW_SANDBOX, MAX_CONCURRENT_ACTIVITIES...) reach
        # the workers through these; nothing else of the shell does.
        settings = Settings(
            database_url=pg.url,
            smtp_host=mail.host,
            smtp_port=mail.port,
            hosting_root=hosting_root,
            mail_root=mail_root,
            code_hmac_key="bench-" + uuid.uuid4().hex,
            ops_email="ops@bench.test",
            metrics_port=None,
        )
        calls = CallCounter()
        stack = Stack(
            workdir=base,
            env=env,
            pg=pg,
            pool=pool,
            mail=mail,
            settings=settings,
            panel=Panel(pool, hosting_root, mail_root),
            calls=calls,
            profiler=Profiler(profile_dir),
            counted=Client(
                env.client.service_client,
                namespace=env.client.namespace,
                data_converter=pydantic_data_converter,
                interceptors=[calls],
            ),
        )
        stop.push_async_callback(stack.stop_workers)
        yield stack
