"""The panel shows what confirming deletes (the inventory, or "contando…" until it is
known) and the dates that matter, over HTTP on the real stack."""

from __future__ import annotations

import html
import re
from datetime import date

import httpx
import pytest
from fastapi import FastAPI

from bajas.models import State
from tests.conftest import Stack
from tests.conftest_api import api_settings, app  # noqa: F401 - fixtures
from tests.helpers import assert_eventually
from tests.helpers.mail import mails_about
from tests.panel_http import client, give_clave, post_form, sign_in

pytestmark = pytest.mark.integration

EXPIRES_ON = date(2099, 6, 15)


def text_of(page: httpx.Response) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text)))


async def test_preview_and_pending_card_show_the_inventory_and_the_dates(
    app: FastAPI,  # noqa: F811
    stack: Stack,
) -> None:
    svc = await stack.panel.service(
        expires_on=EXPIRES_ON, payment_method="auto_debit", files=3, mailboxes=1
    )
    async with client(app) as http:
        await sign_in(http, await give_clave(stack, svc.customer_id))
        preview = text_of(await http.get(f"/panel/servicios/{svc.service_id}/baja"))
        assert "El servicio termina el 15/06/2099." in preview
        assert "Último día para evitar el próximo débito automático: 31/05/2099." in preview
        assert "dentro de las 24 horas de confirmada la baja" in preview

        await post_form(http, f"/panel/servicios/{svc.service_id}/baja")

        async def card() -> str | None:
            page = text_of(await http.get(f"/panel/servicios/{svc.service_id}"))
            return page if "Se eliminarán 3 archivos (" in page else None

        page = await assert_eventually(card, "the inventory on the service page")
        assert "y 1 casilla con 1 mensaje (" in page
        assert "Último día para evitar el próximo débito automático: 31/05/2099." in page
    await stack.cancellations.withdraw(svc.service_id)


async def test_while_counting_the_panel_and_the_mail_say_so(
    app: FastAPI,  # noqa: F811
    stack: Stack,
) -> None:
    """A service on a hosting server whose node worker is not there: nothing counts it."""
    svc = await stack.panel.service(files=3, mailboxes=1)
    await stack.pool.execute(
        "update services set server = 'sin-worker' where id = $1", svc.service_id
    )
    async with client(app) as http:
        await sign_in(http, await give_clave(stack, svc.customer_id))
        await post_form(http, f"/panel/servicios/{svc.service_id}/baja")
        status = await stack.cancellations.status(svc.service_id)
        assert status.state is State.AWAITING_CONFIRMATION and status.inventory is None
        page = text_of(await http.get(f"/panel/servicios/{svc.service_id}"))
        assert "contando…" in page
    [mail] = await assert_eventually(
        lambda: [m for m in mails_about(stack.mail, svc.domain) if "Código" in m.subject]
    )
    assert "Todavía estamos contando los archivos y los mensajes" in mail.body
    await stack.cancellations.withdraw(svc.service_id)
