"""Several `meshgate serve` replicas on one redis-server of their own and the session's
MongoDB (or a MongoDB of their own), and organizations on plans written for a test."""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from server.backends import Backends
from server.bootstrap import bootstrap
from server.settings import Secret, Settings
from storage.tenancy.namespaces import NamespaceStore
from storage.tenancy.organizations import OrganizationStore
from tests.support.pki import Pki
from tests.support.processes import RedisServer, Replica, start_replica, stop_replicas

__all__ = ["Cluster", "limits", "organization_on_plan", "start_cluster"]


def limits(per_second: float, burst: int) -> dict[str, dict[str, float]]:
    """The same limit for every route class."""
    return {
        name: {"per_second": per_second, "burst": burst}
        for name in ("metadata", "data", "search", "admin")
    }


@dataclass
class Cluster:
    redis: RedisServer
    replicas: list[Replica]
    settings: Settings
    pki: Pki
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    def replace_replica(self, index: int) -> Replica:
        """A new replica in the place of replica `index` (stopped or killed)."""
        replica = start_replica(self.settings, self.pki, self.workdir, **self.env)
        self.replicas[index] = replica
        return replica

    def stop(self) -> None:
        try:
            stop_replicas(self.replicas)
        finally:
            self.redis.stop()


def start_cluster(
    settings: Settings,
    pki: Pki,
    workdir: Path,
    *,
    plans: dict[str, Any],
    replicas: int = 3,
    appendonly: bool = False,
    mongodb_uri: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Cluster:
    """A redis-server and `replicas` servers on it (started in parallel), serving `plans`
    (the first plan is the default one), with `env` added to their environment."""
    redis = RedisServer.on_free_port(workdir, appendonly=appendonly)
    redis.start()
    plans_file = workdir / "plans.json"
    plans_file.write_text(json.dumps(plans))
    own = replace(settings, redis_url=Secret(redis.url))
    if mongodb_uri is not None:
        own = replace(own, mongodb_uri=Secret(mongodb_uri))
    extra = {
        "MESHGATE_PLANS_FILE": str(plans_file),
        "MESHGATE_DEFAULT_PLAN": next(iter(plans)),
        **(env or {}),
    }
    cluster = Cluster(redis=redis, replicas=[], settings=own, pki=pki, workdir=workdir, env=extra)
    with ThreadPoolExecutor(replicas) as pool:
        starting = [pool.submit(start_replica, own, pki, workdir, **extra) for _ in range(replicas)]
        failure: BaseException | None = None
        for future in starting:
            try:
                cluster.replicas.append(future.result())
            except Exception as exc:  # stop what did start, then report the first failure
                failure = failure or exc
    if failure is not None:
        cluster.stop()
        raise failure
    return cluster


async def organization_on_plan(backends: Backends, plan: str, name: str) -> tuple[str, str]:
    """A new organization on `plan` with an ADMIN key (development) and a namespace:
    (the key's secret, the namespace id)."""
    result = await bootstrap(backends, name=name, plan=plan, environment="development")
    organization = await OrganizationStore(mongo=backends.mongo).get(result.organization_id)
    namespace = await NamespaceStore(mongo=backends.mongo).create(
        internal_id=organization.internal_id, name=name, environment="development"
    )
    return result.secret, namespace.namespace_id
