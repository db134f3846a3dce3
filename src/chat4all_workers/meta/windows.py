"""Conversation windows: when Meta lets a business send a free-form message to a user.

WhatsApp: "Whenever a WhatsApp user messages you or calls you, a 24-hour timer called a customer
service window starts (or refreshes if one has already been started)... If a window is not open
between you and the user, you can only send template messages" (developers.facebook.com/
documentation/business-messaging/whatsapp/messages/send-messages#customer-service-windows);
outside it a free-form send fails with 131047 (meta/errors.py).

Instagram: "Your app has 24 hours to respond to any message sent from an Instagram user"
(developers.facebook.com/docs/instagram-platform/instagram-api-with-instagram-login/
messaging-api); a human agent may answer up to 7 days after the user's last message, with the
HUMAN_AGENT tag: "All messages sent by a human agent outside of the 24-hour messaging window must
include the HUMAN_AGENT tag" (.../instagram-messaging/features/send-message), "Messages can be
sent within 7 days after a user message" (Meta's message tags, as quoted by its partners: the
tag page itself was not in the stored docs); outside, 10/2534022.

What opens a window: a message of the user to the business (any type: text, media, a button or
list reply, a reaction); on Instagram also a reaction or a postback (a tapped button or ice
breaker: "User clicks a call-to-action button", "User reacts to a message" in Meta's list of
window-opening actions for the Messenger Platform, which Instagram Messaging shares). Read
receipts and deliveries are statuses of OUR messages: they open nothing.

`decide` is the rule; the router keeps each window's last user message in Redis
(delivery/windows.py), and a window error tells it a window it did not know is closed.
"""

from __future__ import annotations

from chat4all_workers.frozen import frozen
from chat4all_workers.meta.payloads import HUMAN_AGENT

WINDOW_S = 24 * 3600  # both channels' standard window
HUMAN_AGENT_WINDOW_S = 7 * 24 * 3600  # Instagram, a human agent with the HUMAN_AGENT tag


@frozen
class Decision:
    send: bool
    tag: str | None = None  # the message tag the send must carry
    reason: str = ""  # why it may not go (send False)


def decide(
    channel: str, *, kind: str, human_agent: bool, age_s: float | None, closed: bool
) -> Decision:
    """Whether a message of `kind` (text, media, template) may go to a user whose last message
    was `age_s` ago (None: not known here), the window marked `closed` by a provider's answer."""
    if kind == "template" and channel == "whatsapp":
        return Decision(True)  # templates are the messages that go outside the window
    if age_s is None and not closed:
        return Decision(True)  # not known: sent, and a window error will say so
    standard = not closed and age_s is not None and age_s <= WINDOW_S
    if standard:
        return Decision(True)
    human_window = age_s is not None and age_s <= HUMAN_AGENT_WINDOW_S
    if channel == "instagram" and human_agent and human_window:
        return Decision(True, tag=HUMAN_AGENT)
    return Decision(False, reason=_closed_reason(channel, human_agent, age_s, closed))


def _closed_reason(channel: str, human_agent: bool, age_s: float | None, closed: bool) -> str:
    since = (
        f"the user last wrote {age_s / 3600:.1f} h ago"
        if age_s is not None
        else "the provider said the window is closed and the user has not written since"
    )
    if channel == "whatsapp":
        return f"outside the 24 h customer service window: {since}; only a template can go now"
    limit = "7 days (a human agent's HUMAN_AGENT tag)" if human_agent else "24 h"
    return f"outside Instagram's messaging window of {limit}: {since}"


def user_key(channel: str, user: str) -> str:
    """A user as the window knows them: WhatsApp's wa_id is the number's digits (our recipients
    carry a '+', Meta's webhooks do not); an Instagram-scoped id as it is."""
    if channel != "whatsapp":
        return user
    if user.isdigit() or (user[1:].isdigit() and user.startswith("+")):  # as most are written
        return user.lstrip("+")
    return "".join(c for c in user if c.isdigit())
