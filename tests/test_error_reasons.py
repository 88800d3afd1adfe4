"""Error details (AIP-193): the reason table of docs/api.md, and every refusal path of a live
server walked against it.

Each refusal is made the way a caller makes it (raw calls over mTLS, as in the other
attacker-side tests) and read the way a client reads it: the `grpc-status-details-bin`
trailer decodes into a `google.rpc.Status` of the call's own code and message, holding an
ErrorInfo of the `meshgate` domain whose reason is in the table with this status, a
RequestInfo with the call's request id, BadRequest / QuotaFailure / RetryInfo where the
table says so, and no secret and no internal_id. The few reasons a live server cannot be
made to give on demand are proved where their fault is made (ELSEWHERE).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf.message import Message
from meshgate.v1 import (
    common_pb2,
    identity_service_pb2,
    key_service_pb2,
    namespace_service_pb2,
    options_pb2,
    organization_service_pb2,
    vector_service_pb2,
)

from server.backends import Backends
from storage.core.clock import utc_now
from storage.core.errors import STATUS_OF
from storage.metering.credits import period_of
from tests.support.clients import auth, raw_unary, trailers_of
from tests.support.credits import exhaust_credits
from tests.support.error_details import ErrorDetails, details_of
from tests.support.processes import ROOT
from tests.support.tenants import MakeTenant, Tenant, internal_id_of

# reasons no call to the shared live server can be made to give: where each is proved
ELSEWHERE = {
    "METHOD_NOT_DECLARED": (
        "tests/interceptors/test_chain_path.py::test_method_without_policy_is_refused"
    ),
    "CONCURRENT_CHANGE": "tests/storage/tenancy/test_keys.py (a rotation that lost its race)",
    "STORE_UNAVAILABLE": "tests/interceptors/test_availability.py (MongoDB stopped under load)",
    "INTERNAL_ERROR": "tests/interceptors/test_errors.py (an exception of no typed error)",
    "SERVER_BUSY": (
        "tests/services/test_backup_bounds.py::test_stalled_imports_are_cut_off_and_their_slots_freed"
    ),
    "TIME_LIMIT_EXCEEDED": (
        "tests/services/test_backup_bounds.py::test_stalled_imports_are_cut_off_and_their_slots_freed"
    ),
}

NS = "/meshgate.v1.NamespaceService/"
KEYS = "/meshgate.v1.KeyService/"
GET_ORG = "/meshgate.v1.OrganizationService/GetOrganization"
DEV = common_pb2.ENVIRONMENT_DEVELOPMENT


def documented_reasons() -> dict[str, str]:
    """docs/api.md's reason table: reason -> status."""
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("### Error details", 1)[1]
    return dict(re.findall(r"^\| `([A-Z_]+)` \| ([A-Z_]+) \|", section, re.M))


def test_the_documented_table_is_the_code_s() -> None:
    assert documented_reasons() == {reason.value: status for reason, status in STATUS_OF.items()}


@dataclass
class Walk:
    """The refusals seen, by reason, and what must never appear in any of them."""

    channel: grpc.aio.Channel
    secrets: list[str]
    seen: dict[str, list[ErrorDetails]] = field(default_factory=dict)

    async def refused(
        self,
        method: str,
        request: Message | bytes,
        metadata: Iterable[tuple[str, str]] = (),
        *,
        reason: str,
        streaming: bool = False,
    ) -> ErrorDetails:
        """Makes the call (client-streaming: with this one message); it must be refused with
        `reason`, its details whole and clean."""
        body = request if isinstance(request, bytes) else request.SerializeToString()
        request_id = f"walk-{secrets.token_hex(4)}"
        sent = (*metadata, ("x-request-id", request_id))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            if streaming:
                upload: grpc.aio.StreamUnaryMultiCallable[bytes, bytes]
                upload = self.channel.stream_unary(method)
                await upload(iter([body]), metadata=sent, timeout=10)
            else:
                await raw_unary(self.channel, method)(body, metadata=sent, timeout=10)
        return self.check(info.value, reason=reason, request_id=request_id)

    def check(self, error: grpc.aio.AioRpcError, *, reason: str, request_id: str) -> ErrorDetails:
        trailers = trailers_of(error)
        details = details_of(trailers)
        assert details.reason == reason, (reason, error.details())
        table = documented_reasons()
        assert table.get(details.reason) == error.code().name, details.reason
        assert details.error_info.domain == "meshgate"
        assert details.status.code == error.code().value[0]
        assert details.status.message == error.details()
        assert details.request_info.request_id == dict(trailers)["x-request-id"]
        if reason != "METADATA_INVALID":  # else the headers, ours too, were not read
            assert details.request_info.request_id == request_id
        raw = details.status.SerializeToString()
        for secret in self.secrets:
            assert secret.encode() not in raw, reason
        if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert details.quota_failure is not None and details.retry_info is not None
            assert int(dict(trailers)["retry-after"]) >= 1
        self.seen.setdefault(reason, []).append(details)
        return details


@pytest.fixture
async def walk(tenant: Tenant, backends: Backends) -> AsyncIterator[Walk]:
    internal_id = await internal_id_of(tenant.organization_id, backends)
    yield Walk(channel=tenant.channel, secrets=[tenant.admin, internal_id])


async def test_every_refusal_carries_a_documented_reason_with_its_details(
    walk: Walk, tenant: Tenant, make_tenant: MakeTenant, backends: Backends
) -> None:
    own = await tenant.namespace()
    other_tenant = await make_tenant()
    foreign = await other_tenant.namespace()
    walk.secrets.append(await internal_id_of(other_tenant.organization_id, backends))
    reader = await tenant.key(options_pb2.PERMISSION_READ)
    confined = await tenant.key(options_pb2.PERMISSION_ADMIN, namespaces=(own.namespace_id,))
    slow = await tenant.keys.CreateKey(
        key_service_pb2.CreateKeyRequest(
            name="slow",
            environment=DEV,
            permissions=[options_pb2.PERMISSION_READ],
            rate_limit=key_service_pb2.RateLimit(per_second=0.01, burst=1),
        ),
        metadata=auth(tenant.admin),
    )
    revoked = await tenant.key(options_pb2.PERMISSION_READ)
    await tenant.keys.RevokeKey(
        key_service_pb2.RevokeKeyRequest(key_id=revoked.key.key_id), metadata=auth(tenant.admin)
    )
    walk.secrets += [reader.secret, confined.secret, slow.secret, revoked.secret]
    get_org = organization_service_pb2.GetOrganizationRequest()
    get_ns = namespace_service_pb2.GetNamespaceRequest()

    # every bad key: one reason, one message, no metadata (no oracle)
    bad_keys: list[tuple[tuple[str, str], ...]] = [
        (),
        auth("mg_dev_nope"),
        auth("mg_development_" + secrets.token_urlsafe(32)),
        auth(revoked.secret),
        (("authorization", "Basic abc"),),
    ]
    answers = set()
    for metadata in bad_keys:
        details = await walk.refused(GET_ORG, get_org, metadata, reason="API_KEY_INVALID")
        answers.add((details.status.message, tuple(details.error_info.metadata.items())))
    assert answers == {("missing or invalid API key", ())}

    details = await walk.refused(
        f"{KEYS}ListKeys",
        key_service_pb2.ListKeysRequest(),
        auth(reader.secret),
        reason="PERMISSION_DENIED_LEVEL",
    )
    assert dict(details.error_info.metadata) == {"permission": "ADMIN"}
    await walk.refused(
        f"{NS}GetNamespace",
        get_ns,
        auth(confined.secret, (await tenant.namespace()).name),
        reason="NAMESPACE_NOT_ALLOWED",
    )
    await walk.refused(
        f"{NS}CreateNamespace",
        namespace_service_pb2.CreateNamespaceRequest(name="confined", environment=DEV),
        auth(confined.secret),
        reason="KEY_SCOPE_INSUFFICIENT",
    )
    await walk.refused(
        "/meshgate.v1.IdentityService/ResolveOrganization",
        identity_service_pb2.ResolveOrganizationRequest(organization_id=tenant.organization_id),
        reason="PEER_NOT_ALLOWED",
    )
    await walk.refused(
        GET_ORG,
        get_org,
        (*auth(tenant.admin), ("x-forwarded-client-cert", "URI=spiffe://forged/admin")),
        reason="FORWARDED_IDENTITY_UNTRUSTED",
    )

    # namespaces: missing, unknown and another organization's (the same answer)
    details = await walk.refused(
        f"{NS}GetNamespace", get_ns, auth(tenant.admin), reason="NAMESPACE_MISSING"
    )
    assert dict(details.error_info.metadata) == {"header": "x-namespace"}
    messages = set()
    for reference in ("no-such-namespace", foreign.name, foreign.namespace_id):
        details = await walk.refused(
            f"{NS}GetNamespace",
            get_ns,
            auth(tenant.admin, reference),
            reason="NAMESPACE_NOT_FOUND",
        )
        messages.add(details.status.message)
    assert messages == {"namespace not found"}

    # malformed input: metadata, message, page token, fields
    details = await walk.refused(
        GET_ORG,
        get_org,
        (*auth(tenant.admin), ("authorization", f"Bearer {tenant.admin}")),
        reason="METADATA_INVALID",
    )
    assert dict(details.error_info.metadata) == {"header": "authorization"}
    await walk.refused(GET_ORG, b"\xff\xff\xff", auth(tenant.admin), reason="REQUEST_MALFORMED")
    details = await walk.refused(
        f"{KEYS}ListKeys",
        key_service_pb2.ListKeysRequest(page_token="forged-token"),
        auth(tenant.admin),
        reason="PAGE_TOKEN_INVALID",
    )
    assert details.fields == ["page_token"]
    bad_fields: list[tuple[str, Message, str]] = [
        (f"{KEYS}ListKeys", key_service_pb2.ListKeysRequest(page_size=-1), "page_size"),
        (f"{KEYS}GetKey", key_service_pb2.GetKeyRequest(key_id="not-a-key-id"), "key_id"),
        (
            f"{NS}CreateNamespace",
            namespace_service_pb2.CreateNamespaceRequest(name="Bad Name", environment=DEV),
            "name",
        ),
    ]
    for method, request, field_name in bad_fields:
        details = await walk.refused(method, request, auth(tenant.admin), reason="FIELD_INVALID")
        assert details.fields == [field_name]
        assert details.bad_request is not None
        assert details.bad_request.field_violations[0].description == details.status.message
    await walk.refused(
        f"{NS}ImportNamespace",
        namespace_service_pb2.ImportNamespaceRequest(data=b"not a backup file"),
        auth(tenant.admin, own.name),
        reason="BACKUP_FILE_INVALID",
        streaming=True,
    )

    # things that are not there, are there already, or are not ready
    await walk.refused(
        f"{KEYS}GetKey",
        key_service_pb2.GetKeyRequest(key_id="key_" + "0" * 20),
        auth(tenant.admin),
        reason="RESOURCE_NOT_FOUND",
    )
    await walk.refused(
        f"{NS}CreateNamespace",
        namespace_service_pb2.CreateNamespaceRequest(name=own.name, environment=DEV),
        auth(tenant.admin),
        reason="RESOURCE_ALREADY_EXISTS",
    )
    await walk.refused(
        "/meshgate.v1.VectorService/GetVectorStore",
        vector_service_pb2.GetVectorStoreRequest(),
        auth(tenant.admin, own.name),
        reason="PRECONDITION_FAILED",
    )

    # limits: the key's own rate limit (burst 1), then the organization's credits
    await raw_unary(tenant.channel, GET_ORG)(
        get_org.SerializeToString(), metadata=auth(slow.secret)
    )
    details = await walk.refused(GET_ORG, get_org, auth(slow.secret), reason="RATE_LIMITED")
    assert dict(details.error_info.metadata) == {"rate_class": "metadata"}
    assert details.quota_failure is not None
    assert details.quota_failure.violations[0].subject == "rate_class:metadata"
    await exhaust_credits(tenant, backends)
    details = await walk.refused(
        f"{NS}GetNamespace", get_ns, auth(tenant.admin, own.name), reason="CREDITS_EXHAUSTED"
    )
    period = period_of(utc_now())
    assert dict(details.error_info.metadata) == {"period": period}
    assert details.quota_failure is not None
    assert details.quota_failure.violations[0].subject == f"credits:{period}"

    walked = set(walk.seen)
    assert walked.isdisjoint(ELSEWHERE)
    assert walked | set(ELSEWHERE) == set(documented_reasons())
