"""Page tokens bound to the call: what a List method's token may be used with.

Every List method (its policy says `paged`: `page_token` in the request,
`next_page_token` in the response) gets its token opened by the chain after the request
is decoded, and the next one sealed after the servicer answered; servicers and stores
see only their own cursors (`storage/core/pages.py`). A token is bound to:

- the caller's organization and its key's environment,
- the namespace of the call (none for organization-wide lists),
- the method,
- the query: the whole request except `page_token` and `page_size` (filters, order,
  states, time ranges...), serialized deterministically.

`page_size` may change from one page to the next (AIP-158): the cursor is the last id
seen, so the size does not change what the next page means. Any other difference, an
altered or hand-made token, or one past its expiry is INVALID_ARGUMENT
(`storage/core/page_tokens.py`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from calls.state import CallState
from storage.core.page_tokens import PageTokens

__all__ = ["BoundPage", "PageTokenBinding"]

_TOKEN_FIELD = "page_token"  # noqa: S105 - a field name
_NEXT_FIELD = "next_page_token"
_SIZE_FIELD = "page_size"


class BoundPage:
    """One call's binding: seals the response's next page token with it."""

    __slots__ = ("_binding", "_tokens")

    def __init__(self, tokens: PageTokens, binding: bytes) -> None:
        self._tokens = tokens
        self._binding = binding

    def seal(self, response: Any) -> None:
        cursor = getattr(response, _NEXT_FIELD)
        setattr(response, _NEXT_FIELD, self._tokens.seal(cursor, binding=self._binding))


class PageTokenBinding:
    def __init__(self, *, tokens: PageTokens) -> None:
        self._tokens = tokens

    def open(self, call: CallState, request: Any) -> BoundPage:
        """Replaces the request's page token by the cursor it seals (PageTokenError when it
        does not belong to this call); returns what seals the next one."""
        token: str = getattr(request, _TOKEN_FIELD)
        binding = self._binding(call, request)
        setattr(request, _TOKEN_FIELD, self._tokens.open(token, binding=binding))
        return BoundPage(self._tokens, binding)

    @staticmethod
    def _binding(call: CallState, request: Any) -> bytes:
        principal = call.principal
        size = getattr(request, _SIZE_FIELD, None)
        token = getattr(request, _TOKEN_FIELD)
        # the query: the request without its token and size (restored right after)
        setattr(request, _TOKEN_FIELD, "")
        if size is not None:
            setattr(request, _SIZE_FIELD, 0)
        try:
            query: bytes = request.SerializeToString(deterministic=True)
        finally:
            setattr(request, _TOKEN_FIELD, token)
            if size is not None:
                setattr(request, _SIZE_FIELD, size)
        parts = (
            call.method,
            principal.organization.organization_id if principal else "",
            principal.key.environment if principal else "",
            call.namespace.namespace_id if call.namespace else "",
        )
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part.encode() + b"\x00")
        digest.update(query)
        return digest.digest()
