"""The last copy on the real stack: the API asks for it, the real worker builds it from the
files on disk, the signed-in customer downloads it from the panel (nobody else can), and
it is gone once the cancellation is done; a link past its time, and a copy that cannot
be built before its deadline, which does not hold the deletion back.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from temporalio import activity

from activities.archive import SITE, ArchiveActivities, ArchiveFiles, folder_name
from bajas.config import Settings
from bajas.models import ArchiveInput, ArchiveProgress, ArchiveResult, ArchiveState, State
from bajas.texts import ARCHIVE_TEXTS
from starter.client import CancellationClient
from tests.conftest import Stack
from tests.conftest_api import (  # noqa: F401 - fixtures
    api,
    api_settings,
    app,
    wait_for_mails,
)
from tests.helpers import assert_eventually
from tests.helpers.mail import code_in
from tests.helpers.panel import ServiceFixture
from tests.panel_http import client, customer_with_clave, give_clave, post_form, sign_in
from tests.test_archive import extract, snapshot
from worker import activities_for, central_workers
from workflows.cancellation import ServiceCancellation
from workflows.sandbox import workflow_runner

pytestmark = pytest.mark.integration


def base(svc: ServiceFixture) -> str:
    return f"/api/customers/{svc.customer_id}/services/{svc.service_id}/cancellation"


def page(svc: ServiceFixture) -> str:
    return f"/panel/servicios/{svc.service_id}"


def link_in(html: str, svc: ServiceFixture) -> str:
    found = re.search(rf'href="({page(svc)}/copia/[A-Za-z0-9_-]+)"', html)
    assert found, "no download link on the page"
    return found.group(1)


async def copy_state(api: httpx.AsyncClient, svc: ServiceFixture, state: str) -> dict:  # noqa: F811
    async def reached() -> dict | None:
        r = await api.get(base(svc) + "/archive")
        return r.json() if r.status_code == 200 and r.json()["state"] == state else None

    return await assert_eventually(reached, f"the copy of {svc.domain} {state}")


async def code_of(stack: Stack, svc: ServiceFixture) -> str:
    [mail] = await wait_for_mails(stack, svc.domain, 1)
    return code_in(mail)


async def done_mail(stack: Stack, svc: ServiceFixture) -> str:
    mails = await wait_for_mails(stack, svc.domain, 2)
    [done] = [m for m in mails if "dado de baja" in m.subject]
    return done.body


def on_disk(settings: Settings, token: str) -> list[Path]:
    files = ArchiveFiles(settings.archive_root, token)
    return [p for p in (files.final, files.partial) if p.exists()]


async def audit_events(stack: Stack, service_id: int) -> list[str]:
    rows = await stack.pool.fetch(
        "select event from bajas.audit_trail where service_id = $1 order by id", service_id
    )
    return [r["event"] for r in rows]


async def test_the_copy_routes_are_in_the_schema(api: httpx.AsyncClient) -> None:  # noqa: F811
    paths = (await api.get("/openapi.json")).json()["paths"]
    copy = paths["/api/customers/{cid}/services/{sid}/cancellation/archive"]
    assert set(copy) == {"get", "post"}
    assert {"202", "404", "409"} <= set(copy["post"]["responses"])
    shape = copy["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert shape == {"$ref": "#/components/schemas/ArchiveStatus"}


async def test_copy_downloaded_by_its_customer_only_and_deleted_with_the_rest(
    api: httpx.AsyncClient,  # noqa: F811
    app: object,  # noqa: F811
    stack: Stack,
    tmp_path: Path,
) -> None:
    svc = await stack.panel.service(files=40, mailboxes=2)
    assert svc.document_root is not None
    site = snapshot(svc.document_root)
    number = await give_clave(stack, svc.customer_id)
    assert (await api.post(base(svc))).status_code == 202
    r = await api.get(base(svc) + "/archive")
    assert r.status_code == 404, r.text

    r = await api.post(base(svc) + "/archive")
    assert r.status_code == 202, r.text
    assert r.json() == {"state": "building", "expires_at": None, "bytes": None}
    ready = await copy_state(api, svc, "ready")
    assert ready["bytes"] > 0 and ready["expires_at"]
    r = await api.post(base(svc) + "/archive")
    assert (r.status_code, r.json()["detail"]) == (
        409,
        "cannot make a copy: a copy is already ready",
    )
    assert (await api.get(base(svc))).json()["archive"] == ready

    async with client(app) as http:  # type: ignore[arg-type]
        await sign_in(http, number)
        shown = await http.get(page(svc))
        assert "Descargar la copia" in shown.text and "Pedir una copia" not in shown.text
        href = link_in(shown.text, svc)
        token = href.rsplit("/", 1)[-1]
        # the token is the panel's alone: neither the API nor the status query carries it
        assert token not in (await api.get(base(svc))).text
        assert token not in (await api.get(base(svc) + "/archive")).text

        got = await http.get(href)
        assert got.status_code == 200
        assert got.headers["content-type"] == "application/zstd"
        assert f'filename="copia-{svc.domain}-' in got.headers["content-disposition"]
        [archive] = on_disk(stack.settings, token)
        assert got.content == archive.read_bytes()
        downloaded = tmp_path / "descarga.tar.zst"
        downloaded.write_bytes(got.content)
        extract(downloaded, tmp_path / "out")
        top = tmp_path / "out" / folder_name(svc.domain)
        assert snapshot(top / SITE) == site
        assert (await http.get(f"{page(svc)}/copia/{secrets.token_urlsafe(32)}")).status_code == 404

        async with client(app) as stranger:  # type: ignore[arg-type]
            _, other_number, _ = await customer_with_clave(stack)
            await sign_in(stranger, other_number)
            assert (await stranger.get(href)).status_code == 404
        async with client(app) as anonymous:  # type: ignore[arg-type]
            assert (await anonymous.get(href)).status_code == 303

        r = await api.post(base(svc) + "/confirm", json={"code": await code_of(stack, svc)})
        assert r.status_code == 200, r.text
        r = await api.post(base(svc) + "/archive")
        assert r.status_code == 409 and "deletion has started" in r.json()["detail"]
        await assert_eventually(
            lambda: stack.cancellations.result(svc.service_id), "the cancellation's end"
        )
        assert (await api.get(base(svc) + "/archive")).json()["state"] == "expired"
        assert on_disk(stack.settings, token) == []
        assert (await http.get(href)).status_code == 404
    assert not svc.document_root.exists()
    assert ARCHIVE_TEXTS[ArchiveState.EXPIRED] in await done_mail(stack, svc)
    events = await audit_events(stack, svc.service_id)
    assert {"archive_built:1", "archive_deleted:1"} <= set(events)


# ---- a worker of its own: short links, a short deadline, builds that never end ---------


@dataclass
class SlowBuilds:
    """`build_archive` as the real one, except for the services in `slow`: those write a
    partial archive and then heartbeat until cancelled, as a build far too big would."""

    real: ArchiveActivities
    slow: set[int] = field(default_factory=set)
    cancelled: set[int] = field(default_factory=set)

    @activity.defn(name="build_archive")
    async def build_archive(self, data: ArchiveInput) -> ArchiveResult:
        if data.service_id not in self.slow:
            return await self.real.build_archive(data)
        files = ArchiveFiles(self.real.archive_root, data.token)
        files.root.mkdir(parents=True, exist_ok=True)
        files.partial.write_bytes(b"the first bytes of a copy")
        try:
            while True:
                activity.heartbeat(ArchiveProgress(bytes=25))
                await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            self.cancelled.add(data.service_id)
            raise


@dataclass
class Short:
    settings: Settings
    cancellations: CancellationClient
    builds: SlowBuilds


@pytest_asyncio.fixture(scope="module")
async def short(stack: Stack) -> AsyncIterator[Short]:
    settings = stack.settings.model_copy(
        update={
            "temporal_task_queue": f"bajas-short-copies-{uuid.uuid4()}",
            "archive_ttl": timedelta(seconds=2),
            "archive_deadline": timedelta(seconds=3),
        }
    )
    builds = SlowBuilds(
        ArchiveActivities(
            stack.pool, settings.hosting_root, settings.mail_root, settings.archive_root
        )
    )
    others = [a for a in activities_for(settings, stack.pool) if a.__name__ != "build_archive"]
    worker = central_workers(
        stack.client,
        settings.temporal_task_queue,
        workflows=[ServiceCancellation],
        workflow_runner=workflow_runner(sandboxed=True),
        activities=[*others, builds.build_archive],
    )
    task = asyncio.create_task(worker.run())
    yield Short(settings, CancellationClient(stack.client, settings.temporal_task_queue), builds)
    await worker.shutdown()
    await task


async def test_a_link_past_its_time_is_404_and_a_new_copy_can_be_asked_for(
    short: Short,
    api: httpx.AsyncClient,  # noqa: F811
    app: object,  # noqa: F811
    stack: Stack,
) -> None:
    svc = await stack.panel.service(files=5, mailboxes=1)
    number = await give_clave(stack, svc.customer_id)
    await short.cancellations.request(svc.service_id, svc.customer_id)
    async with client(app) as http:  # type: ignore[arg-type]
        await sign_in(http, number)
        asked = await post_form(http, f"{page(svc)}/copia")
        assert "Estamos preparando la copia" in asked.text
        first = await short.cancellations.archive_link(svc.service_id, svc.customer_id)
        assert first is not None
        await copy_state(api, svc, "expired")
        await assert_eventually(lambda: on_disk(short.settings, first.token) == [], "deleted")
        assert (await http.get(f"{page(svc)}/copia/{first.token}")).status_code == 404

        again = await post_form(http, f"{page(svc)}/copia")
        assert "Estamos preparando la copia" in again.text
        second = await short.cancellations.archive_link(svc.service_id, svc.customer_id)
        assert second is not None and second.token != first.token
    # withdrawn: the run ends, and its copy with it
    assert (await api.delete(base(svc))).json()["state"] == "withdrawn"
    await assert_eventually(lambda: on_disk(short.settings, second.token) == [], "deleted")
    assert (await api.get(base(svc) + "/archive")).json()["state"] in ("expired", "failed")
    assert svc.document_root is not None and svc.document_root.exists()


async def test_a_copy_not_built_in_time_does_not_hold_back_the_deletion(
    short: Short,
    api: httpx.AsyncClient,  # noqa: F811
    stack: Stack,
) -> None:
    svc = await stack.panel.service(files=5, mailboxes=1)
    short.builds.slow.add(svc.service_id)
    await short.cancellations.request(svc.service_id, svc.customer_id)
    assert (await api.post(base(svc) + "/archive")).status_code == 202
    link = await short.cancellations.archive_link(svc.service_id, svc.customer_id)
    assert link is not None
    await assert_eventually(lambda: on_disk(short.settings, link.token), "a partial copy")
    await copy_state(api, svc, "building")

    r = await api.post(base(svc) + "/confirm", json={"code": await code_of(stack, svc)})
    assert r.status_code == 200, r.text
    result = await asyncio.wait_for(short.cancellations.result(svc.service_id), 60)
    assert result.state is State.CANCELLED
    assert svc.service_id in short.builds.cancelled
    assert (await api.get(base(svc) + "/archive")).json()["state"] == "failed"
    assert on_disk(short.settings, link.token) == []
    assert svc.document_root is not None and not svc.document_root.exists()
    assert ARCHIVE_TEXTS[ArchiveState.FAILED] in await done_mail(stack, svc)
