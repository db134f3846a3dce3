"""Channel adapters (WhatsApp, Instagram) behind the `ChannelAdapter` interface, and their mocks."""

from __future__ import annotations

import aiohttp

from chat4all_workers.channels.base import ChannelAdapter
from chat4all_workers.channels.instagram import InstagramAdapter
from chat4all_workers.channels.whatsapp import WhatsAppAdapter
from chat4all_workers.config import Settings

CHANNELS = ("whatsapp", "instagram")


def build_adapters(settings: Settings, session: aiohttp.ClientSession) -> dict[str, ChannelAdapter]:
    """One adapter per known channel, sharing the process's HTTP session."""
    return {
        "whatsapp": WhatsAppAdapter(settings.whatsapp, session),
        "instagram": InstagramAdapter(settings.instagram, session),
    }
