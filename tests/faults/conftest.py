"""Fixtures of the fault-injection suite: three `meshgate serve` replicas on a redis-server
and a MongoDB engine process of their own (each can be killed, slowed or stopped), the
traffic each test runs through them, and the table of what every fault did, printed at
the end (docs/faults.md holds a copy)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest

from server.backends import Backends, open_backends
from server.settings import Secret, Settings
from tests.support.cluster import organization_on_plan, start_cluster
from tests.support.faults import (
    CLUSTER_ENV,
    PLANS,
    FaultCluster,
    FaultRow,
    Traffic,
    fault_table,
)
from tests.support.pki import Pki
from tests.support.processes import MongoEngine


@pytest.fixture(scope="package")
def fault_cluster(
    settings: Settings, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultCluster]:
    workdir = tmp_path_factory.mktemp("faults")
    mongo = MongoEngine.on_free_port(workdir)
    mongo.start()
    try:
        cluster = start_cluster(
            settings, pki, workdir, plans=PLANS, mongodb_uri=mongo.uri, env=CLUSTER_ENV
        )
    except BaseException:
        mongo.stop()
        raise
    yield FaultCluster(cluster=cluster, mongo=mongo)
    try:
        cluster.stop()
    finally:
        mongo.stop()


@pytest.fixture(scope="package")
async def fault_backends(
    fault_cluster: FaultCluster, settings: Settings
) -> AsyncIterator[Backends]:
    """The cluster's stores, from the test process (to set organizations up)."""
    own = replace(
        settings,
        mongodb_uri=Secret(fault_cluster.mongo.uri),
        redis_url=Secret(fault_cluster.cluster.redis.url),
    )
    backends = await open_backends(own, with_qdrant=False)
    yield backends
    await backends.close()


@pytest.fixture(scope="package")
def fault_rows(request: pytest.FixtureRequest) -> Iterator[list[FaultRow]]:
    rows: list[FaultRow] = []
    yield rows
    if rows:
        text = "\nWhat each fault did (3 replicas under load):\n" + fault_table(rows) + "\n"
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(text, flush=True)


@pytest.fixture
async def traffic(
    fault_cluster: FaultCluster, fault_backends: Backends, pki: Pki
) -> AsyncIterator[Traffic]:
    """Load for one test: documents of an organization on a large plan, and 1-credit calls
    of one on a plan of ALLOWANCE (tests/support/faults.py) credits a month."""
    docs_secret, docs_namespace = await organization_on_plan(fault_backends, "large", "docs")
    credit_secret, credit_namespace = await organization_on_plan(fault_backends, "small", "spend")
    running = Traffic(
        replicas=list(fault_cluster.cluster.replicas),
        pki=pki,
        docs_secret=docs_secret,
        docs_namespace=docs_namespace,
        credit_secret=credit_secret,
        credit_namespace=credit_namespace,
    )
    yield running
    await running.stop()
    await running.close()
    await asyncio.sleep(0)
