"""The webhooks role's parts: Meta's notifications received, checked, read and stored.

- `answers.py`: what an HTTP request is answered (status, body), apart from the framing;
- `accounting.py`: the requests and events counted, and the rejected requests logged;
- `provider_word.py`: our ids for each status, and the provider's word recorded in the router's
  dedup markers (how sends in doubt are settled);
- `storing.py`: the records produced (Kafka's ack awaited, parked while the breaker is open)
  and a body that breaks the format dead-lettered;
- `service.py`: `Webhooks`, one request from signature to answer;
- `server.py`: the HTTP framing (aiohttp) and the quiet period on stop.

roles/webhooks.py wires them; Meta's protocol itself (signatures, parsing) is meta/'s.
"""
