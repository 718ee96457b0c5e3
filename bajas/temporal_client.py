"""One way to reach Temporal, shared by the worker, the API and the CLI."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile

DEFAULT_ADDRESS = "localhost:7233"


async def connect(**overrides: object) -> Client:
    """Read TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TLS and profiles as
    the `temporal` CLI does (temporalio.envconfig), with the pydantic converter."""
    config = dict(ClientConfigProfile.load().to_client_connect_config())
    config.setdefault("target_host", DEFAULT_ADDRESS)
    config.update(overrides)
    return await Client.connect(**config, data_converter=pydantic_data_converter)  # type: ignore[arg-type]
