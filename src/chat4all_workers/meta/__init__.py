"""Meta's messaging protocol, as a library the I/O layer drives: pure, no I/O, no asyncio.

- `errors.py`: the error-code table per channel (code -> throttled, transient, rejected,
  account), each row from Meta's page, and `error_for_answer`;
- `limits.py`: what a channel takes in one message, checked before any call;
- `payloads.py`: `OutboundMessage` and the Send API bodies per channel;
- `callback.py`: the callback data our sends carry and Meta echoes;
- `signature.py`: `X-Hub-Signature-256` and the verification GET;
- `events.py`: what webhooks carry, as events, and the readers both parsers share;
- `whatsapp_webhooks.py`, `instagram_webhooks.py`: each channel's notifications, parsed;
- `notifications.py`: writers of the same notifications (the mocks, tests, benchmarks).

Like h11 under httpx: the adapters (channels/), the webhooks role and the simulators do the I/O;
an import-linter contract keeps every I/O library out of this package.
"""
