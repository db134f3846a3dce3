"""Channel adapters (WhatsApp, Instagram) behind the `ChannelAdapter` interface, with pacing and
pauses: the I/O over Meta's protocol (meta/)."""

from __future__ import annotations

from chat4all_workers.channels.base import ChannelAdapter
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.channels.instagram import InstagramAdapter
from chat4all_workers.channels.whatsapp import WhatsAppAdapter
from chat4all_workers.config import Settings


def build_adapters(settings: Settings, http: HttpClient) -> dict[str, ChannelAdapter]:
    """One adapter per known channel, sharing the process's HTTP client."""
    return {
        "whatsapp": WhatsAppAdapter(settings.whatsapp, http),
        "instagram": InstagramAdapter(settings.instagram, http),
    }
