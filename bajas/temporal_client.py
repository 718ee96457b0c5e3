"""One way to reach Temporal, shared by the worker, the API, the CLI, `bajas dev` and tests.

Every client and worker gets its data converter from `data_converter(settings)`: the
pydantic converter, plus the AES-GCM codec (and failure messages moved into encoded
attributes) when PAYLOAD_KEYS is set. A process built any other way reads ciphertext.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from temporalio.client import Client
from temporalio.common import HeaderCodecBehavior
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.envconfig import ClientConfigProfile

from bajas import tracing
from bajas.codec import AesGcmCodec
from bajas.config import ConfigError, Settings, Unreachable

DEFAULT_ADDRESS = "localhost:7233"


def payload_codec(settings: Settings) -> AesGcmCodec | None:
    """The codec for PAYLOAD_KEYS, or None when encryption is off."""
    value = settings.payload_keys_value()
    return AesGcmCodec.from_setting(value) if value is not None else None


def data_converter(settings: Settings) -> DataConverter:
    """The converter of every bajas client and worker (and of tests' environments)."""
    codec = payload_codec(settings)
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        # error messages name paths and domains: keep them inside the encrypted payloads
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def connect_config(**overrides: Any) -> dict[str, Any]:
    """TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE
    and the config file, read by temporalio.envconfig as the `temporal` CLI reads them."""
    try:
        config = dict(ClientConfigProfile.load().to_client_connect_config())
    except Exception as err:  # the bridge's own error types: bad file, unknown profile
        raise ConfigError(f"Temporal client configuration: {_first_line(err)}") from None
    config.setdefault("target_host", DEFAULT_ADDRESS)
    config.update(overrides)
    return config


async def connect(settings: Settings | None = None, **overrides: Any) -> Client:
    """A client with bajas' data converter (and, when tracing is on, Temporal's tracing
    interceptor, which its workers inherit); Unreachable names the address when it fails.

    Without `settings` they are read from the environment.
    """
    converter = data_converter(settings or Settings())
    config = connect_config(**overrides)
    try:
        # headers sealed like every payload: the workflow sends its first run's id in one
        # (bajas/run_chain.py), and a stored history holds no payload in clear
        return await Client.connect(
            **config,
            data_converter=converter,
            header_codec_behavior=HeaderCodecBehavior.CODEC,
            interceptors=tracing.client_interceptors(),
        )
    except RuntimeError as err:  # the bridge reports every connect failure this way
        raise Unreachable(
            "Temporal", str(config["target_host"]), _address_variable(), _reason(err, config)
        ) from None


def _address_variable() -> str:
    if "TEMPORAL_ADDRESS" in os.environ or "TEMPORAL_PROFILE" not in os.environ:
        return "TEMPORAL_ADDRESS"
    return f"TEMPORAL_ADDRESS, or the address of profile {os.environ['TEMPORAL_PROFILE']}"


CLIENT_CERT = "TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH"


def _reason(err: BaseException, config: dict[str, Any]) -> str | None:
    """None for a plain refusal (the address says it all), else the cause in a few words
    and the setting that would fix it."""
    text = str(err)
    tls = config.get("tls")
    if "Connection refused" in text or "ConnectionRefused" in text:
        return None
    if "InvalidCertificate" in text:
        if "NotValidForName" in text:
            return (
                "its TLS certificate names another host: set TEMPORAL_TLS_SERVER_NAME to"
                " a name it carries"
            )
        return (
            "its TLS certificate is not trusted: set TEMPORAL_TLS_SERVER_CA_CERT_PATH to"
            " the CA that signed it"
        )
    closed = "connection closed" in text or "broken pipe" in text.lower()
    if closed and tls:
        # the server ended the connection right after the TLS handshake: its check of
        # the client's certificate (mTLS) failed
        if getattr(tls, "client_cert", None) is None and not config.get("api_key"):
            return f"the server demands a client certificate: set {CLIENT_CERT}"
        if getattr(tls, "client_cert", None) is not None:
            return (
                "the server refused the client certificate (TEMPORAL_TLS_CLIENT_CERT_PATH):"
                " it is not signed by a CA the server trusts"
            )
    if closed and not tls:
        return "no answer over plain gRPC: if the server expects TLS, set TEMPORAL_TLS=true"
    for marker, reason in (
        ("dns error", "unknown host"),
        ("timed out", "timed out"),
        ("tls", "TLS handshake failed"),
        ("Unauthenticated", "not authenticated (TEMPORAL_API_KEY or client certificate)"),
        ("PermissionDenied", "permission denied"),
    ):
        if marker.lower() in text.lower():
            return reason
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    text = (str(err).strip() or type(err).__name__).removeprefix("Failed client connect: ")
    return text.splitlines()[0][:160]
