"""Three `meshgate serve` processes started at the same moment against one empty database.

Each creates every index at start-up; together they must all come up healthy,
and the database must end with the same indexes as one process alone makes.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from pathlib import Path

import pytest

from server.settings import Settings
from storage.backends.mongo import MongoStore
from tests.support.pki import Pki
from tests.support.processes import start_replicas


async def indexes(store: MongoStore) -> dict[str, list[tuple[str, object]]]:
    """Every collection's index names and keys."""
    out: dict[str, list[tuple[str, object]]] = {}
    for name in sorted(await store.database.list_collection_names()):
        info = await store.database[name].index_information()
        out[name] = sorted((index, spec["key"]) for index, spec in info.items())
    return out


async def one_process_alone(
    settings: Settings, pki: Pki, workdir: Path, mongo_uri: str, database: str
) -> dict[str, list[tuple[str, object]]]:
    """The collections and indexes one `meshgate serve` alone makes in an empty database."""
    (alone,) = start_replicas(1, replace(settings, mongodb_database=database), pki, workdir)
    store = MongoStore(uri=mongo_uri, database=database)
    try:
        assert alone.terminate() == 0
        return await indexes(store)
    finally:
        if alone.process.poll() is None:
            alone.process.kill()
            alone.process.wait()
        await store.database.client.drop_database(database)
        await store.close()


@pytest.mark.slow
async def test_three_replicas_start_together_against_one_empty_database(
    settings: Settings,
    mongo_uri: str,
    database_name: str,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    database = f"{database_name}_together_{secrets.token_hex(3)}"
    own = replace(settings, mongodb_database=database)
    workdir = tmp_path_factory.mktemp("together")
    started = time.monotonic()
    replicas = start_replicas(3, own, pki, workdir)
    took = time.monotonic() - started
    store = MongoStore(uri=mongo_uri, database=database)
    try:
        serving = [
            line.split(" in ")[-1].split("s")[0]
            for r in replicas
            for line in r.log().splitlines()
            if "serving on" in line
        ]
        print(
            f"\n3 replicas started together, all healthy after {took:.2f} s"
            f" (each: backends to serving in {', '.join(serving)} s)"
        )
        built = await indexes(store)
        assert built == await one_process_alone(
            settings, pki, workdir, mongo_uri, f"{database}_alone"
        )
        for replica in replicas:
            assert replica.terminate() == 0
            assert '"level": "ERROR"' not in replica.log(), replica.log()
    finally:
        for replica in replicas:
            if replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait()
        await store.database.client.drop_database(database)
        await store.close()
