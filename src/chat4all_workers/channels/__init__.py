"""Channel adapters (WhatsApp, Instagram) behind the `ChannelAdapter` interface, with pacing and
pauses: the I/O over Meta's protocol (meta/)."""

from __future__ import annotations

from chat4all_workers.channels.base import ChannelAdapter
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.channels.instagram import InstagramAdapter
from chat4all_workers.channels.whatsapp import WhatsAppAdapter
from chat4all_workers.config import Settings
from chat4all_workers.config_values import Secret


def build_adapter(
    channel: str, settings: Settings, http: HttpClient, *, provider_id: str, token: Secret
) -> ChannelAdapter:
    """The adapter that sends as one account (`provider_id`, `token`) on `channel`, over the
    process's HTTP client; the channel's section gives the API's address, version and timeout."""
    if channel == "whatsapp":
        return WhatsAppAdapter(settings.whatsapp, http, provider_id=provider_id, token=token)
    if channel == "instagram":
        return InstagramAdapter(settings.instagram, http, provider_id=provider_id, token=token)
    raise ValueError(f"unknown channel {channel!r}")


def build_adapters(settings: Settings, http: HttpClient) -> dict[str, ChannelAdapter]:
    """One adapter per known channel for the environment's single account."""
    return {
        "whatsapp": WhatsAppAdapter(settings.whatsapp, http),
        "instagram": InstagramAdapter(settings.instagram, http),
    }
