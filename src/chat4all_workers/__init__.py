"""Every background worker of the Chat4All platform, supervised in one asyncio event loop."""

__version__ = "0.1.0"
