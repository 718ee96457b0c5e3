"""Encrypted history: the payload codec, and operators reading through the codec server.

The unit tests judge the codec alone. The integration tests run one real cancellation with
PAYLOAD_KEYS set (the session's dev server, PostgreSQL and SMTP sink; a worker and a client
of their own built by `bajas.temporal_client`), then read its stored history the ways an
outsider and an operator would: without the codec (no domain, address or reason in
clear anywhere), through `bajas codec-server` with the real `temporal` CLI, and with the
requests the Web UI sends from the browser. The codec server holds a newer key first and
the worker's key second, so every decoded read also proves a rotated-out key still decodes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload, Payloads, SearchAttributes
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from bajas.codec import ENCODING, KEY_ID, AesGcmCodec, PayloadKeyError, new_payload_key
from bajas.config import ConfigError, Settings
from bajas.dev.binaries import find_binary
from bajas.dev.mailsink import MailSink
from bajas.models import State
from bajas.temporal_client import connect, data_converter
from starter.client import CancellationClient
from tests.helpers import assert_eventually, free_port
from tests.helpers.mail import code_in, mails_about
from tests.helpers.panel import Panel, ServiceFixture
from tests.helpers.processes import clean_env
from worker import build_worker
from workflows.search_attributes import workflow_id_for

UI_ORIGIN = "http://localhost:8233"
TIMEOUT = 30.0


def payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


# ---- the codec alone ------------------------------------------------------------------------


async def test_round_trip_hides_data_and_metadata() -> None:
    codec = AesGcmCodec.from_setting(new_payload_key("k1"))
    original = payload("sitio.example.test")
    [sealed] = await codec.encode([original])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID] == b"k1"
    assert b"sitio" not in sealed.SerializeToString()
    assert b"json/plain" not in sealed.SerializeToString()
    assert await codec.decode([sealed]) == [original]


async def test_rotated_key_still_decodes_and_a_dropped_key_is_named() -> None:
    old, new = new_payload_key("2024"), new_payload_key("2025")
    [sealed_old] = await AesGcmCodec.from_setting(old).encode([payload("viejo")])
    rotated = AesGcmCodec.from_setting(f"{new},{old}")
    assert await rotated.decode([sealed_old]) == [payload("viejo")]
    [sealed_new] = await rotated.encode([payload("nuevo")])
    assert sealed_new.metadata[KEY_ID] == b"2025"
    with pytest.raises(PayloadKeyError, match="'2024'"):
        await AesGcmCodec.from_setting(new).decode([sealed_old])


async def test_clear_payloads_pass_through_and_altered_ones_fail() -> None:
    codec = AesGcmCodec.from_setting(new_payload_key("k1"))
    clear = payload("historia anterior al cifrado")
    assert await codec.decode([clear]) == [clear]
    [sealed] = await codec.encode([payload("x")])
    sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(PayloadKeyError, match="does not authenticate"):
        await codec.decode([sealed])
    relabelled = Payload()
    relabelled.CopyFrom(sealed)
    relabelled.metadata[KEY_ID] = b"k2"
    with pytest.raises(PayloadKeyError):
        await AesGcmCodec.from_setting(new_payload_key("k2")).decode([relabelled])


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("k1", "not ID:BASE64KEY"),
        ("k1:not base64!", "not valid base64"),
        (f"k1:{base64.b64encode(b'0' * 16).decode()}", "128 bits"),
        (f"{new_payload_key('k1')},{new_payload_key('k1')}", "listed twice"),
        (" , ", "lists no key"),
    ],
)
def test_bad_payload_keys_are_refused_naming_the_variable(value: str, words: str) -> None:
    with pytest.raises(ConfigError, match="PAYLOAD_KEYS") as caught:
        AesGcmCodec.from_setting(value)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_failure_messages_travel_encrypted() -> None:
    """Error messages name paths, hence domains: they move into the encrypted attributes."""
    converter = data_converter(Settings(payload_keys=SecretStr(new_payload_key("k1"))))
    from temporalio.api.failure.v1 import Failure

    failure = Failure()
    await converter.encode_failure(
        ApplicationError("refused /srv/www/secreto.example.test", type="PathRefused"), failure
    )
    assert b"secreto" not in failure.SerializeToString()
    assert failure.encoded_attributes.metadata["encoding"] == ENCODING
    again = await converter.decode_failure(failure)
    assert "secreto.example.test" in str(again)


def test_without_keys_the_converter_is_the_pydantic_one() -> None:
    from temporalio.contrib.pydantic import pydantic_data_converter

    assert data_converter(Settings()) is pydantic_data_converter


# ---- one encrypted cancellation on the real stack -------------------------------------------


@dataclass
class Encrypted:
    client: Client
    cancellations: CancellationClient
    settings: Settings
    panel: Panel
    address: str
    namespace: str
    worker_keys: str


@dataclass
class Done:
    service: ServiceFixture
    reason: str
    workflow_id: str

    def personal(self) -> list[str]:
        return [self.service.domain, self.service.email, self.reason]


@pytest_asyncio.fixture(scope="module")
async def encrypted(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, mail: MailSink, settings: Settings
) -> AsyncIterator[Encrypted]:
    keys = new_payload_key("2025-01")
    own = settings.model_copy(
        update={
            "payload_keys": SecretStr(keys),
            "temporal_task_queue": f"bajas-codec-{uuid.uuid4()}",
        }
    )
    address = temporal_env.client.service_client.config.target_host
    namespace = temporal_env.client.namespace
    client = await connect(own, target_host=address, namespace=namespace)
    async with build_worker(client, own, pool):
        yield Encrypted(
            client=client,
            cancellations=CancellationClient(client, own.temporal_task_queue),
            settings=own,
            panel=Panel(pool, own.hosting_root, own.mail_root),
            address=address,
            namespace=namespace,
            worker_keys=keys,
        )


@pytest_asyncio.fixture(scope="module")
async def done(encrypted: Encrypted, mail: MailSink) -> Done:
    service = await encrypted.panel.service(files=3, mailboxes=2)
    reason = f"nos mudamos a otro proveedor {uuid.uuid4().hex[:10]}"
    cancellations = encrypted.cancellations
    await cancellations.request(service.service_id, service.customer_id, reason=reason)
    mails = await assert_eventually(lambda: mails_about(mail, service.domain), "the code mail")
    accepted = await cancellations.confirm(service.service_id, code_in(mails[0]))
    assert accepted.accepted
    result = await asyncio.wait_for(cancellations.result(service.service_id), TIMEOUT)
    assert result.state is State.CANCELLED
    return Done(service, reason, workflow_id_for(service.service_id))


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload inside a proto message, except search attributes (never encoded)."""
    if isinstance(message, Payload):
        yield message
        return
    if isinstance(message, SearchAttributes):
        return
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            values = list(value.values())
        elif field.is_repeated:
            values = list(value)
        else:
            values = [value]
        for item in values:
            if isinstance(item, Message):
                yield from payloads_in(item)


async def test_stored_history_holds_no_personal_data_in_clear(
    encrypted: Encrypted, done: Done
) -> None:
    plain = await Client.connect(encrypted.address, namespace=encrypted.namespace)
    history = await plain.get_workflow_handle(done.workflow_id).fetch_history()
    raw = b"".join(event.SerializeToString() for event in history.events)
    as_json = history.to_json()
    for text in done.personal():
        assert text.encode() not in raw, text
        assert text not in as_json, text
    found = [(event, p) for event in history.events for p in payloads_in(event)]
    # inputs, results, update arguments, heartbeats, summaries and details: all sealed, but
    # for the SDK's own bookkeeping in markers (patch ids, local activity timings)
    sealed = [p for _, p in found if p.metadata["encoding"] == ENCODING]
    assert len(sealed) > 10
    for event, p in found:
        if p.metadata["encoding"] != ENCODING:
            assert event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED, event
            assert set(json.loads(p.data)) & {"id", "activity_type"}, p
    started = history.events[0].workflow_execution_started_event_attributes
    assert history.events[0].user_metadata.details.metadata["encoding"] == ENCODING
    # search attributes are never encrypted: ids and states only
    for value in started.search_attributes.indexed_fields.values():
        text = json.loads(value.data)
        assert str(text).replace("_", "").isalnum() and "@" not in str(text), text


async def test_current_details_and_queries_are_encrypted_too(
    encrypted: Encrypted, done: Done
) -> None:
    plain = await Client.connect(encrypted.address, namespace=encrypted.namespace)
    with pytest.raises(KeyError, match="binary/encrypted"):
        await plain.get_workflow_handle(done.workflow_id).query(
            "__temporal_workflow_metadata", result_type=WorkflowMetadata
        )
    handle = encrypted.client.get_workflow_handle(done.workflow_id)
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert "cancelled" in metadata.current_details
    status = await encrypted.cancellations.status(done.service.service_id)
    assert status.domain == done.service.domain


# ---- the codec server, as operators reach it ------------------------------------------------


@dataclass
class CodecServer:
    url: str
    token: str
    new_key_id: str


def _bajas() -> list[str]:
    script = Path(sys.executable).with_name("bajas")
    return [str(script)] if script.exists() else [sys.executable, "-m", "starter.cli"]


@pytest.fixture(scope="module")
def codec_server(
    encrypted: Encrypted, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CodecServer]:
    """`bajas codec-server` holding a newer key first and the worker's key second."""
    port = free_port()
    token = secrets.token_urlsafe(24)
    folder = tmp_path_factory.mktemp("codec")
    env = clean_env(
        {
            "PAYLOAD_KEYS": f"{new_payload_key('2025-02')},{encrypted.worker_keys}",
            "CODEC_SERVER_TOKEN": token,
            "CODEC_CORS_ORIGINS": UI_ORIGIN,
        }
    )
    with open(folder / "codec-server.log", "wb") as log:
        server = subprocess.Popen(
            [*_bajas(), "codec-server", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                httpx.get(f"{url}/", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, (folder / "codec-server.log").read_text()
                subprocess.run(["sleep", "0.2"], check=True)
        yield CodecServer(url=url, token=token, new_key_id="2025-02")
    finally:
        server.terminate()
        server.wait(timeout=15)


async def temporal_cli(encrypted: Encrypted, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        find_binary("temporal"),
        *args,
        "--address",
        encrypted.address,
        "--namespace",
        encrypted.namespace,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env({}),
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_cli_reads_the_history_through_the_codec_server(
    encrypted: Encrypted, done: Done, codec_server: CodecServer
) -> None:
    show = ("workflow", "show", "--workflow-id", done.workflow_id, "--detailed")
    sealed = await temporal_cli(encrypted, *show)
    assert "binary/encrypted" in sealed
    assert done.service.domain not in sealed and done.reason not in sealed
    opened = await temporal_cli(
        encrypted,
        *show,
        "--codec-endpoint",
        codec_server.url,
        "--codec-auth",
        f"Bearer {codec_server.token}",
    )
    assert f"domain: {done.service.domain}" in opened
    assert f"reason: {done.reason}" in opened
    # the reason is the customer's: never in the Web UI's texts, encrypted or not
    assert "userMetadata.details: Requested by panel, effective now" in opened
    assert f"Requested by panel: {done.reason}" not in opened
    assert "binary/encrypted" not in opened


async def _started_input(encrypted: Encrypted, done: Done) -> Payloads:
    history = await encrypted.client.get_workflow_handle(done.workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    return started.input  # still encrypted: fetch_history returns the events as stored


async def test_web_ui_requests_decode(
    encrypted: Encrypted, done: Done, codec_server: CodecServer
) -> None:
    sealed = await _started_input(encrypted, done)
    assert sealed.payloads[0].metadata["encoding"] == ENCODING
    body = json_format.MessageToJson(sealed)
    async with httpx.AsyncClient(base_url=codec_server.url, timeout=TIMEOUT) as http:
        preflight = await http.options(
            f"/{encrypted.namespace}/decode",
            headers={
                "Origin": UI_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == UI_ORIGIN
        assert preflight.headers["access-control-allow-credentials"] == "true"
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert {"content-type", "x-namespace", "authorization"} <= set(allowed.split(", "))
        stranger = await http.options(
            "/decode",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in stranger.headers

        ui_headers = {
            "Origin": UI_ORIGIN,
            "Content-Type": "application/json",
            "X-Namespace": encrypted.namespace,
        }
        for path in ("/decode", f"/{encrypted.namespace}/decode"):
            answer = await http.post(
                path,
                content=body,
                headers={**ui_headers, "Authorization": f"Bearer {codec_server.token}"},
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["access-control-allow-origin"] == UI_ORIGIN
            decoded = json_format.Parse(answer.text, Payloads())
            value = json.loads(decoded.payloads[0].data)
            assert value["service_id"] == done.service.service_id
            assert value["reason"] == done.reason

        # "Include cross-origin credentials": the browser signed in once sends the cookie
        signed_in = await http.post("/login", data={"token": codec_server.token})
        assert signed_in.status_code == 200
        with_cookie = await http.post("/decode", content=body, headers=ui_headers)
        assert with_cookie.status_code == 200, with_cookie.text
        assert (
            done.reason in json_format.Parse(with_cookie.text, Payloads()).payloads[0].data.decode()
        )


async def test_encode_uses_the_first_key(codec_server: CodecServer) -> None:
    body = json_format.MessageToJson(Payloads(payloads=[payload("hola")]))
    auth = {"Authorization": f"Bearer {codec_server.token}"}
    async with httpx.AsyncClient(base_url=codec_server.url, timeout=TIMEOUT) as http:
        sealed = json_format.Parse(
            (await http.post("/encode", content=body, headers=auth)).text, Payloads()
        )
        assert sealed.payloads[0].metadata[KEY_ID] == codec_server.new_key_id.encode()
        back = await http.post("/decode", content=json_format.MessageToJson(sealed), headers=auth)
        assert json_format.Parse(back.text, Payloads()).payloads[0] == payload("hola")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"Authorization": "Bearer wrong-token-wrong-token"}, id="wrong"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="basic"),
        pytest.param({"Cookie": "bajas_codec=forged"}, id="forged_cookie"),
    ],
)
async def test_wrong_token_is_401(
    encrypted: Encrypted, done: Done, codec_server: CodecServer, headers: dict[str, str]
) -> None:
    body = json_format.MessageToJson(await _started_input(encrypted, done))
    async with httpx.AsyncClient(base_url=codec_server.url, timeout=TIMEOUT) as http:
        for path in ("/decode", "/encode", "/default/decode"):
            answer = await http.post(path, content=body, headers=headers)
            assert answer.status_code == 401, (path, answer.text)
            assert done.reason not in answer.text
        refused = await http.post("/login", data={"token": "wrong-token-wrong-token"})
        assert refused.status_code == 401 and "set-cookie" not in refused.headers


async def test_operator_cli_needs_the_keys(
    encrypted: Encrypted, done: Done, tmp_path: Path
) -> None:
    """`bajas status` reads the encrypted workflow with PAYLOAD_KEYS, and says what is
    missing in one line without them."""
    env = {
        "TEMPORAL_ADDRESS": encrypted.address,
        "TEMPORAL_NAMESPACE": encrypted.namespace,
        "TEMPORAL_TASK_QUEUE": encrypted.settings.temporal_task_queue,
    }
    argv = (*_bajas(), "status", "--service", str(done.service.service_id), "--json")

    async def status(**extra: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=clean_env({**env, **extra}),
            cwd=tmp_path,
        )
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await status(PAYLOAD_KEYS=encrypted.worker_keys)
    assert code == 0, err
    assert json.loads(out)["domain"] == done.service.domain
    code, out, err = await status()
    assert (code, out) == (1, ""), err
    assert err.strip() == "error: the history is encrypted: set PAYLOAD_KEYS to the workers' keys"
