"""What the mocks answer when they refuse, and the errors they fail messages with later.

Meta's Graph API error object (`{"error": {message, type, code, error_subcode?, error_data?,
fbtrace_id}}`), a gateway's HTML page (what a proxy in front of Meta answers when Meta is slow:
no error object, nothing proven), and the `errors[0]` of a WhatsApp `failed` status for the
codes the mocks fail messages with asynchronously, in Meta's words (WhatsApp's error codes page
and its status webhook reference, both cited in meta/errors.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from chat4all_workers.meta.events import StatusError

OAUTH = "OAuthException"
GRAPH_METHOD = "GraphMethodException"

# A failed status's errors[0] per code: (title, details). The titles are Meta's (the error
# codes page; 131049's is the status webhook reference's example), the details its descriptions.
ASYNC_FAILURES: Mapping[int, tuple[str, str]] = {
    131026: (
        "Message undeliverable",
        "Unable to deliver message. Reasons can include: The recipient phone number is not a "
        "WhatsApp phone number. Recipient has not accepted our new Terms of Service and Privacy "
        "Policy. Recipient using an old WhatsApp version.",
    ),
    131049: (
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
    ),
    131053: ("Media upload error", "Unable to download the media from the link"),
    130472: (
        "User's number is part of an experiment",
        "Message was not sent as part of an experiment.",
    ),
    131047: (
        "Re-engagement message",
        "More than 24 hours have passed since the recipient last replied to the sender number.",
    ),
    130429: (
        "Rate limit hit",
        "Message failed to send because there were too many messages sent from this phone "
        "number in a short period of time",
    ),
    131000: ("Something went wrong", "Message failed to send due to an unknown error."),
}

GATEWAY_TIMEOUT_PAGE = (
    "<html><head><title>504 Gateway Time-out</title></head>"
    "<body><center><h1>504 Gateway Time-out</h1></center></body></html>"
)

_traces = itertools.count(1)


def status_error(code: int) -> StatusError:
    """The error of a `failed` status with `code` (one of ASYNC_FAILURES)."""
    title, details = ASYNC_FAILURES[code]
    return StatusError(code, title, details)


def error(
    status: int,
    message: str,
    code: int,
    subcode: int | None = None,
    *,
    details: str = "",
    kind: str = OAUTH,
) -> web.Response:
    """Meta's error object, as the Graph API answers it."""
    body: dict[str, Any] = {"message": message, "type": kind, "code": code}
    if details:
        body["error_data"] = {"details": details}
    if subcode is not None:
        body["error_subcode"] = subcode
    body["fbtrace_id"] = f"MOCK{next(_traces):08d}"
    return web.json_response({"error": body}, status=status)


def gateway_timeout() -> web.Response:
    """A gateway's 504: an HTML page, no error object."""
    return web.Response(status=504, text=GATEWAY_TIMEOUT_PAGE, content_type="text/html")
