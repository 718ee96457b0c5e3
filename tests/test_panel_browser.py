"""The customer panel in Debian's chromium (Playwright), on a real uvicorn server and stack.

Also a few plain-HTTP checks of the panel: CSRF, sign-in required, the same message for
an unknown number and a wrong clave. With BAJAS_SCREENSHOTS=docs/screenshots the pages
are saved there for the README; otherwise into a temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import pytest_asyncio
from argon2 import PasswordHasher

from tests.conftest import Stack
from tests.conftest_api import (  # noqa: F401 - fixtures
    Server,
    api_settings,
    app,
    server,
    wait_for_mails,
    wrong,
)
from tests.helpers.mail import CODE_RE, code_in
from tests.helpers.panel import ServiceFixture

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

pytestmark = [pytest.mark.integration]

SCREENSHOTS = Path(os.environ.get("BAJAS_SCREENSHOTS") or tempfile.mkdtemp(prefix="bajas-shots-"))
CHROMIUM = "/usr/bin/chromium"
CLAVE = "una clave larga 123"

browser_needed = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="needs Debian's chromium (apt-get install chromium)"
)


async def customer_with_clave(stack: Stack) -> tuple[int, str, str]:
    """(customer id, customer number, e-mail) of a new customer whose clave is CLAVE."""
    cid, email = await stack.panel.customer(password_hash=PasswordHasher().hash(CLAVE))
    number = await stack.pool.fetchval("select number from customers where id = $1", cid)
    return cid, number, email


@pytest_asyncio.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        await b.close()


async def new_page(browser: Browser, server: Server) -> tuple[BrowserContext, Page]:  # noqa: F811
    context = await browser.new_context(
        base_url=server.url, viewport={"width": 1000, "height": 720}, locale="es-AR"
    )
    return context, await context.new_page()


async def sign_in(page: Page, number: str, clave: str = CLAVE) -> None:
    await page.goto("/panel/")
    await page.get_by_label("Número de cliente").fill(number)
    await page.get_by_label("Clave").fill(clave)
    await page.get_by_role("button", name="Ingresar").click()


async def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@browser_needed
async def test_cancel_a_service_in_the_browser(
    stack: Stack,
    server: Server,  # noqa: F811
    browser: Browser,
) -> None:
    cid, number, email = await customer_with_clave(stack)
    svc: ServiceFixture = await stack.panel.service((cid, email), files=2500, mailboxes=2)
    other = await stack.panel.service(
        (cid, email), payment_method="auto_debit", mailboxes=1, files=1
    )
    await stack.panel.service((cid, email), status="suspended", mailboxes=0, files=1)
    await stack.panel.service((cid, email), status="cancelled", mailboxes=0, files=1)

    context, page = await new_page(browser, server)

    # Sign-in: an unknown number and a wrong clave get the same message.
    await page.goto("/panel/")
    assert page.url.endswith("/panel/ingresar")
    await shot(page, "01-sign-in")
    await sign_in(page, number, "not the clave")
    await page.get_by_text("Número de cliente o clave incorrectos.").wait_for()
    await sign_in(page, "no-such-number")
    await page.get_by_text("Número de cliente o clave incorrectos.").wait_for()
    await sign_in(page, number)
    await page.get_by_role("heading", name="Servicios").wait_for()
    body = await page.inner_text("main")
    for word in ("activo", "suspendido", "dado de baja"):
        assert word in body
    await shot(page, "02-services")

    # "Solicitar baja del servicio" first shows what will be lost and the billing outcome.
    card = page.locator(f"#servicio-{svc.service_id}")
    await card.get_by_role("button", name="Solicitar baja del servicio").click()
    await page.get_by_role("heading", name=f"Baja del servicio {svc.domain}").wait_for()
    preview = await page.inner_text("main")
    assert f"buzon0@{svc.domain}" in preview and f"buzon1@{svc.domain}" in preview
    assert "no habrá más cargos" in preview
    await shot(page, "03-request-preview")
    await page.get_by_role("button", name="Solicitar baja del servicio").click()
    await page.get_by_label("Código de confirmación").wait_for()
    text = await page.inner_text("main")
    assert "baja pendiente de confirmación" in text
    assert "Le enviamos un código de confirmación por correo" in text
    await page.get_by_role("button", name="Reenviar código").wait_for()
    await page.get_by_role("button", name="Desistir").wait_for()
    # Next to the red button, what confirming deletes, said again.
    code_form = await page.inner_text("form.code-form")
    assert "sin posibilidad de recuperarlo" in code_form
    assert f"buzon0@{svc.domain}" in code_form and f"buzon1@{svc.domain}" in code_form
    assert "2 buzones" in code_form

    # The code, read where a person trying the demo reads it: the dev mail viewer.
    await page.get_by_role("link", name="Correo recibido (solo desarrollo)").click()
    await page.get_by_role("heading", name="Correo recibido").wait_for()
    # Times to the second: three codes for one domain can be told apart.
    received = await page.locator("table.mail tbody tr td").first.inner_text()
    assert re.search(r"\d{2}:\d{2}:\d{2}", received), received
    await shot(page, "06-mail-viewer")
    await page.get_by_role(
        "link", name=f"Código de confirmación para la baja de {svc.domain}"
    ).click()
    mail_body = await page.inner_text("pre.body")
    match = CODE_RE.search(mail_body)
    assert match, mail_body
    code = match.group(1)
    await shot(page, "07-mail-message")

    # A wrong code says how many attempts remain.
    await page.goto(f"/panel/servicios/{svc.service_id}")
    await page.get_by_label("Código de confirmación").fill(wrong(code))
    await page.get_by_role("button", name="Confirmar baja del servicio").click()
    await page.get_by_text("intentos restantes").first.wait_for()
    flashed = await page.inner_text("main .flash")
    assert "intentos restantes: 4" in flashed and "quedan" not in flashed.lower()
    await shot(page, "04-confirm-wrong-code")

    # The right code: the cancellation runs, then the service is "dado de baja".
    await page.get_by_label("Código de confirmación").fill(code)
    await page.get_by_role("button", name="Confirmar baja del servicio").click()
    await page.get_by_text("Baja confirmada").first.wait_for()
    await shot(page, "05-deprovisioning")
    for _ in range(100):
        state = await page.inner_text(f"#servicio-{svc.service_id} .state")
        if state == "dado de baja":
            break
        await page.wait_for_timeout(300)
        await page.reload()
    assert state == "dado de baja"
    done = await page.inner_text(f"#servicio-{svc.service_id}")
    assert "2 buzones de correo" in done and "buzónes" not in done
    await shot(page, "05-done")
    await page.goto("/panel/")
    assert await page.inner_text(f"#servicio-{svc.service_id} .state") == "dado de baja"
    assert await page.inner_text(f"#servicio-{other.service_id} .state") == "activo"

    # Another customer never sees or acts on this customer's service, whatever the URL.
    stranger_cid, stranger_number, stranger_email = await customer_with_clave(stack)
    await stack.panel.service((stranger_cid, stranger_email), mailboxes=0, files=1)
    context2, page2 = await new_page(browser, server)
    await sign_in(page2, stranger_number)
    await page2.get_by_role("heading", name="Servicios").wait_for()
    assert other.domain not in await page2.inner_text("main")
    for path in (
        f"/panel/servicios/{other.service_id}",
        f"/panel/servicios/{other.service_id}/baja",
        "/panel/servicios/999999999999",
        "/panel/servicios/abc",
    ):
        response = await page2.goto(path)
        assert response is not None and response.status == 404, path
        assert "No encontrado" in await page2.inner_text("main")
        assert other.domain not in await page2.content()
        # still signed in, and the header says so
        assert f"cliente {stranger_number}" in await page2.inner_text("header.top")
        await page2.get_by_role("button", name="Salir").wait_for()
    await shot(page2, "08-not-found")
    # Posting to the other's service with a valid form of its own session: 404, nothing started.
    await page2.goto("/panel/")
    token = await page2.locator("input[name=csrf_token]").first.get_attribute("value")
    answer = await page2.request.post(
        f"/panel/servicios/{other.service_id}/baja", form={"csrf_token": token or ""}
    )
    assert answer.status == 404
    assert (
        await stack.pool.fetchval(
            "select count(*) from bajas.cancellation_requests where service_id = $1",
            other.service_id,
        )
        == 0
    )

    # Sign-out.
    await page.get_by_role("button", name="Salir").click()
    await page.get_by_label("Número de cliente").wait_for()
    await page.goto(f"/panel/servicios/{svc.service_id}")
    assert page.url.endswith("/panel/ingresar")
    await context.close()
    await context2.close()


# ---- plain HTTP: CSRF and sign-in -------------------------------------------------------------


@pytest_asyncio.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:  # noqa: F811
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        yield client


def flashes_of(html: str) -> list[tuple[str, str]]:
    """(kind, text) of each message on the page, in order."""
    return re.findall(r'<p class="flash (\w+)" role="status">(.*?)</p>', html, re.S)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field"
    return match.group(1)


async def test_panel_needs_sign_in(http: httpx.AsyncClient, stack: Stack) -> None:
    svc = await stack.panel.service()
    for path in ("/panel/", f"/panel/servicios/{svc.service_id}", "/"):
        r = await http.get(path, follow_redirects=True)
        assert r.status_code == 200
        assert r.url.path == "/panel/ingresar"
        assert "Número de cliente" in r.text and "Ingresar" in r.text
    r = await http.post(f"/panel/servicios/{svc.service_id}/baja", data={"csrf_token": "x"})
    assert r.status_code in (303, 403)
    assert (
        await stack.pool.fetchval(
            "select count(*) from bajas.cancellation_requests where service_id = $1", svc.service_id
        )
        == 0
    )


async def test_forms_without_the_csrf_token_are_refused(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    cid, number, _ = await customer_with_clave(stack)
    svc = await stack.panel.service((cid, "x@example.test"), mailboxes=0, files=1)
    form = await http.get("/panel/ingresar")
    r = await http.post("/panel/ingresar", data={"numero": number, "clave": CLAVE})
    assert r.status_code == 403
    assert "Formulario vencido" in r.text
    r = await http.post(
        "/panel/ingresar",
        data={"numero": number, "clave": CLAVE, "csrf_token": csrf_of(form.text)},
    )
    assert r.status_code == 303
    page = await http.get("/panel/")
    assert "Servicios" in page.text
    for token in ("", "forged"):
        r = await http.post(f"/panel/servicios/{svc.service_id}/baja", data={"csrf_token": token})
        assert r.status_code == 403
    assert (
        await stack.pool.fetchval(
            "select count(*) from bajas.cancellation_requests where service_id = $1", svc.service_id
        )
        == 0
    )
    # Pages carry the protective headers.
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


async def test_same_message_for_unknown_number_and_wrong_clave(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    _, number, _ = await customer_with_clave(stack)
    no_hash, _ = await stack.panel.customer()
    no_hash_number = f"C{no_hash}"
    answers = []
    for numero, clave in (
        (number, "wrong clave"),
        ("nobody-has-this-number", CLAVE),
        (no_hash_number, CLAVE),
        ("", ""),
    ):
        token = csrf_of((await http.get("/panel/ingresar")).text)
        r = await http.post(
            "/panel/ingresar", data={"numero": numero, "clave": clave, "csrf_token": token}
        )
        answers.append((r.status_code, "Número de cliente o clave incorrectos." in r.text))
    assert answers == [(200, True)] * 4


async def test_mail_viewer_lists_messages(http: httpx.AsyncClient, stack: Stack) -> None:
    r = await http.get("/dev/mail")
    assert r.status_code == 200
    assert "Correo recibido" in r.text
    assert (await http.get("/dev/mail/999999")).status_code == 404


async def http_sign_in(http: httpx.AsyncClient, number: str) -> None:
    token = csrf_of((await http.get("/panel/ingresar")).text)
    r = await http.post(
        "/panel/ingresar", data={"numero": number, "clave": CLAVE, "csrf_token": token}
    )
    assert r.status_code == 303


async def test_resend_and_withdraw_forms(http: httpx.AsyncClient, stack: Stack) -> None:
    cid, number, email = await customer_with_clave(stack)
    svc = await stack.panel.service((cid, email), mailboxes=1, files=1)
    await http_sign_in(http, number)
    page = f"/panel/servicios/{svc.service_id}"
    token = csrf_of((await http.get(page)).text)

    r = await http.post(page + "/baja", data={"csrf_token": token}, follow_redirects=True)
    assert "baja pendiente de confirmación" in r.text
    # The message lives in the readable cookie until shown: no e-mail address in it.
    assert "Le enviamos un código de confirmación por correo" in r.text
    # A malformed code is refused on the spot, without spending an attempt.
    r = await http.post(
        page + "/confirmar", data={"csrf_token": token, "codigo": "12"}, follow_redirects=True
    )
    assert "tiene 6 dígitos" in r.text
    assert "Intentos restantes: 5." in r.text

    r = await http.post(page + "/reenviar", data={"csrf_token": token}, follow_redirects=True)
    assert "Le enviamos un código nuevo" in r.text
    assert "Reenvíos disponibles: 2." in r.text

    r = await http.post(page + "/desistir", data={"csrf_token": token}, follow_redirects=True)
    assert "Desistió de la baja" in r.text
    assert "Usted desistió de la solicitud de baja anterior." in r.text
    assert '<span class="state active">activo</span>' in r.text
    assert "Solicitar baja del servicio" in r.text

    r = await http.post(page + "/desistir", data={"csrf_token": token}, follow_redirects=True)
    assert "Ya no se puede desistir" in r.text


async def test_a_stale_tab_confirming_again_is_told_calmly(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    """The second "Confirmar" from a tab left open finds the service "dado de baja": the
    page says so in the card's own terms, and the card no longer claims automatic debit."""
    cid, number, email = await customer_with_clave(stack)
    svc = await stack.panel.service((cid, email), payment_method="auto_debit", files=3)
    await http_sign_in(http, number)
    page = f"/panel/servicios/{svc.service_id}"
    before = await http.get(page)
    assert "débito automático" in before.text and "revocado" not in before.text
    token = csrf_of(before.text)

    await http.post(page + "/baja", data={"csrf_token": token})
    code = code_in((await wait_for_mails(stack, svc.domain, 1))[0])
    form = {"csrf_token": token, "codigo": code}
    r = await http.post(page + "/confirmar", data=form, follow_redirects=True)
    # Both messages, the request's (not shown yet: its redirect was not followed) and this one.
    flashes = flashes_of(r.text)
    assert [kind for kind, _ in flashes] == ["ok", "ok"], flashes
    assert flashes[1][1].startswith("Baja confirmada."), flashes
    result = await asyncio.wait_for(stack.cancellations.result(svc.service_id), 60)
    assert result.state.value == "cancelled"

    r = await http.post(page + "/confirmar", data=form, follow_redirects=True)
    assert r.status_code == 200
    assert flashes_of(r.text) == [
        ("info", "Esta baja ya estaba confirmada: el servicio está dado de baja.")
    ]
    assert '<span class="state cancelled">dado de baja</span>' in r.text
    mandate = await stack.pool.fetchval(
        "select status from debit_mandates where service_id = $1", svc.service_id
    )
    assert mandate == "revoked"
    meta = re.search(r'<p class="meta">(.*?)</p>', r.text, re.S)
    assert meta and "débito automático revocado" in meta.group(1), r.text
    assert "2 buzones de correo" in r.text and "buzónes" not in r.text


async def test_not_found_page_keeps_the_signed_in_header(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    _, number, _ = await customer_with_clave(stack)
    r = await http.get("/panel/no-such-page")
    assert r.status_code == 404 and "Salir" not in r.text  # signed out: no header to keep
    await http_sign_in(http, number)
    for path in ("/panel/servicios/999999999999", "/panel/servicios/abc", "/panel/no-such-page"):
        r = await http.get(path)
        assert r.status_code == 404, path
        assert "No encontrado" in r.text
        assert f"cliente {number}" in r.text and "Salir" in r.text, path


# ---- when and why, the scheduled banner, the timeline (contract section 8) ---------------


def timeline_of(html: str) -> list[tuple[str, str]]:
    """(time shown, text) of each line of the "Historial de la baja"."""
    block = re.search(r'<ol class="timeline">(.*?)</ol>', html, re.S)
    assert block, "no timeline on the page"
    return [
        (when, " ".join(text.split()))
        for when, text in re.findall(
            r"<li><time datetime=\"[^\"]+\">([^<]+)</time>(.*?)</li>", block.group(1), re.S
        )
    ]


async def test_end_of_term_through_the_panel(http: httpx.AsyncClient, stack: Stack) -> None:
    cid, number, email = await customer_with_clave(stack)
    svc = await stack.panel.service((cid, email), expires_on=date(2099, 6, 15), mailboxes=1)
    await http_sign_in(http, number)
    page = f"/panel/servicios/{svc.service_id}"
    preview = await http.get(page + "/baja")
    assert 'name="reason_code"' in preview.text and 'maxlength="500"' in preview.text
    for label in ("El precio", "Me cambio a otro proveedor", "Problemas técnicos", "Otro motivo"):
        assert f">{label}</option>" in preview.text
    assert "Ahora: se borra todo dentro de las 24 horas de confirmar." in preview.text
    until = "hasta el 15 de junio de 2099 a las 00:00 (hora de Buenos Aires)"
    assert f"Al final del período: el sitio y el correo siguen funcionando {until}." in (
        " ".join(preview.text.split())
    )

    # A browser sends the textarea's line break as CRLF and counts it as one character.
    reason = "a" * 250 + "\r\n" + "b" * 249
    token = csrf_of(preview.text)
    r = await http.post(
        page + "/baja",
        data={
            "csrf_token": token,
            "effective": "end_of_term",
            "reason_code": "problemas_tecnicos",
            "reason": reason,
        },
        follow_redirects=True,
    )
    assert "baja pendiente de confirmación" in r.text
    assert f"Al confirmar, el sitio y el correo siguen funcionando {until}." in " ".join(
        r.text.split()
    )
    row = await stack.pool.fetchrow(
        "select effective, reason_code, reason from bajas.cancellation_requests"
        " where service_id = $1",
        svc.service_id,
    )
    assert dict(row) == {
        "effective": "end_of_term",
        "reason_code": "problemas_tecnicos",
        "reason": reason.replace("\r\n", "\n"),
    }

    code = code_in((await wait_for_mails(stack, svc.domain, 1))[0])
    r = await http.post(
        page + "/confirmar", data={"csrf_token": token, "codigo": code}, follow_redirects=True
    )
    assert (
        "ok",
        "Baja confirmada y programada para el final del período. Hasta entonces el "
        "sitio y el correo siguen funcionando; le avisaremos por correo cuando se "
        "complete.",
    ) in flashes_of(r.text)
    assert '<span class="state scheduled">baja programada</span>' in r.text
    text = " ".join(r.text.split())
    assert (
        f"Baja confirmada y programada para el final del período: el sitio y el correo siguen funcionando {until}."
        in text
    )
    assert "Desistir" in text and "Solicitar baja del servicio" not in text
    lines = timeline_of(r.text)
    assert [t for _, t in lines] == [
        "Solicitud de baja",
        "Código de confirmación enviado por correo",
        "Baja confirmada",
        f"Programada para el final del período: el sitio y el correo siguen funcionando {until}",
    ]
    assert all(
        re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d \(hora de Buenos Aires\)", w) for w, _ in lines
    )
    # The list of services shows the banner too, never a plain "activo".
    listing = await http.get("/panel/")
    card = listing.text[listing.text.index(f'id="servicio-{svc.service_id}"') :]
    card = card[: card.index("</article>")]
    assert "baja programada" in card and "activo" not in card
    assert "siguen funcionando" in card

    r = await http.post(page + "/desistir", data={"csrf_token": token}, follow_redirects=True)
    assert "Desistió de la baja" in r.text
    assert '<span class="state active">activo</span>' in r.text
    assert [t for _, t in timeline_of(r.text)][-1] == "Usted desistió de la baja"
    assert svc.document_root is not None and svc.document_root.exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param(
            {"reason": "x" * 501},
            "El comentario puede tener hasta 500 caracteres (el suyo tiene 501). "
            "La baja no se inició.",
            id="long",
        ),
        pytest.param(
            {"reason_code": "caro"}, "Elija el motivo de la lista. La baja no se inició.", id="code"
        ),
        pytest.param(
            {"effective": "mañana"},
            "Elija cuándo se borra: ahora o al final del período. La baja no se inició.",
            id="when",
        ),
    ],
)
async def test_bad_reasons_are_refused_in_spanish(
    http: httpx.AsyncClient, stack: Stack, fields: dict[str, str], message: str
) -> None:
    cid, number, email = await customer_with_clave(stack)
    svc = await stack.panel.service((cid, email), mailboxes=0, files=1)
    await http_sign_in(http, number)
    page = f"/panel/servicios/{svc.service_id}"
    token = csrf_of((await http.get(page)).text)
    r = await http.post(page + "/baja", data={"csrf_token": token, **fields}, follow_redirects=True)
    assert flashes_of(r.text) == [("error", message)]
    assert r.url.path == page + "/baja"  # back on the form
    assert (
        await stack.pool.fetchval(
            "select count(*) from bajas.cancellation_requests where service_id = $1",
            svc.service_id,
        )
        == 0
    )


async def test_the_timeline_of_a_finished_cancellation(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    cid, number, email = await customer_with_clave(stack)
    svc = await stack.panel.service((cid, email), mailboxes=1, files=2)
    await http_sign_in(http, number)
    page = f"/panel/servicios/{svc.service_id}"
    token = csrf_of((await http.get(page)).text)
    await http.post(page + "/baja", data={"csrf_token": token, "effective": "now"})
    code = code_in((await wait_for_mails(stack, svc.domain, 1))[0])
    await http.post(page + "/confirmar", data={"csrf_token": token, "codigo": code})
    result = await asyncio.wait_for(stack.cancellations.result(svc.service_id), 60)
    assert result.state.value == "cancelled"
    texts = [t for _, t in timeline_of((await http.get(page)).text)]
    assert texts[:5] == [
        "Solicitud de baja",
        "Código de confirmación enviado por correo",
        "Baja confirmada",
        "Comenzó el borrado",
        "Facturación cerrada",
    ]
    assert sorted(texts[5:7]) == ["Archivos del sitio borrados", "Buzones de correo borrados"]
    assert texts[7:] == ["Servicio dado de baja"]
