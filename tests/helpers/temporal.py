"""The Temporal servers the tests and the benchmark run on, as `--workflow-environment` says.

- `time-skipping`: the test server, whose clock jumps to the next timer while a test
  awaits a result. The default for the workflow-logic tests (fake activities).
- `local`: a dev server started here (`WorkflowEnvironment.start_local`). The default for
  the real-stack tests; the workflow-logic tests run on it too when chosen.
- `host:port`: an existing server, for both. It must know the four search attributes of
  `workflows.search_attributes`; they are added when missing and the server allows it
  (a dev server does), otherwise create them once with
  `temporal operator search-attribute create --name ServiceId --type Keyword` (the same
  for CustomerId and CancellationState, and `--name SlaAtRisk --type Bool`).

The real stack always needs a real server: with `time-skipping` it still gets a local
one. Every client uses the pydantic data converter, as the worker's does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType, SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from bajas.dev.binaries import find_binary
from tests.helpers import DEFAULT_TIMEOUT, assert_eventually
from workflows.search_attributes import ALL as SEARCH_ATTRIBUTES

TIME_SKIPPING = "time-skipping"
LOCAL = "local"

_INDEXED = {
    SearchAttributeIndexedValueType.KEYWORD: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    SearchAttributeIndexedValueType.BOOL: IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
}


def search_attribute_flags(
    keys: Sequence[SearchAttributeKey[Any]] = SEARCH_ATTRIBUTES,
) -> list[str]:
    """`temporal server start-dev` flags that register `keys` (ServiceId=Keyword, ...)."""
    flags: list[str] = []
    for key in keys:
        flags += ["--search-attribute", f"{key.name}={key.indexed_value_type.name.title()}"]
    return flags


async def start_local(**options: Any) -> WorkflowEnvironment:
    """A dev server of the session's own, with the search attributes and the converter."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
        **options,
    )


async def start_time_skipping() -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server"),
        data_converter=pydantic_data_converter,
    )
    # Unregistered, every upsert fails the workflow task and the workflow hangs.
    await ensure_search_attributes(env.client)
    return env


async def connect(address: str, *, timeout: float = DEFAULT_TIMEOUT) -> Client:
    """A client of the server at `address`, once it answers for the default namespace."""

    async def answering() -> Client:
        client = await Client.connect(address, data_converter=pydantic_data_converter)
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=client.namespace)
        )
        return client

    return await assert_eventually(
        answering,
        f"the Temporal server at {address}",
        timeout=timeout,
        retry=(RuntimeError, RPCError),
    )


async def ensure_search_attributes(
    client: Client, keys: Sequence[SearchAttributeKey[Any]] = SEARCH_ATTRIBUTES
) -> None:
    """Register the search attributes the server lacks; fail saying how if it refuses."""
    known: Mapping[str, int]
    try:
        known = (
            await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=client.namespace)
            )
        ).custom_attributes
    except RPCError as err:
        if err.status is not RPCStatusCode.UNIMPLEMENTED:
            raise
        known = {}  # the time-skipping test server lists nothing but can add
    wrong = [
        k.name for k in keys if k.name in known and known[k.name] != _INDEXED[k.indexed_value_type]
    ]
    if wrong:
        raise RuntimeError(f"search attributes {wrong} exist with another type on the server")
    missing = [k for k in keys if k.name not in known]
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={k.name: _INDEXED[k.indexed_value_type] for k in missing},
            )
        )
    except RPCError as err:
        how = "; ".join(
            f"temporal operator search-attribute create --name {k.name}"
            f" --type {k.indexed_value_type.name.title()}"
            for k in missing
        )
        raise RuntimeError(
            f"the server lacks search attributes and refused them ({err}): {how}"
        ) from err


class Environments:
    """The session's Temporal servers, each started on first use and shut down at the end.

    `real()` serves the real stack, `logic()` the workflow-logic tests; with `local` or an
    address they are one and the same server.
    """

    def __init__(self, choice: str | None) -> None:
        self.choice = choice
        self._real: WorkflowEnvironment | None = None
        self._skipping: WorkflowEnvironment | None = None
        self._lock = asyncio.Lock()

    async def real(self) -> WorkflowEnvironment:
        async with self._lock:
            if self._real is None:
                if self.choice in (None, LOCAL, TIME_SKIPPING):
                    self._real = await start_local()
                else:
                    client = await connect(self.choice)
                    await ensure_search_attributes(client)
                    self._real = WorkflowEnvironment.from_client(client)
            return self._real

    async def logic(self) -> WorkflowEnvironment:
        """The time-skipping server (a new one if a failed test broke the clock of the
        last), or the real stack's server when another environment was chosen."""
        if self.choice not in (None, TIME_SKIPPING):
            return await self.real()
        async with self._lock:
            if self._skipping is not None and not await _skips_time(self._skipping):
                # A test that ended with an activity in flight leaves the test server
                # unable to skip time again: every later test would time out.
                await self._skipping.shutdown()
                self._skipping = None
            if self._skipping is None:
                self._skipping = await start_time_skipping()
            return self._skipping

    async def shutdown(self) -> None:
        for env in (self._skipping, self._real):
            if env is not None:
                await env.shutdown()


async def _skips_time(env: WorkflowEnvironment) -> bool:
    try:
        await asyncio.wait_for(env.sleep(timedelta(minutes=1)), timeout=5)
    except TimeoutError:
        return False
    return True
