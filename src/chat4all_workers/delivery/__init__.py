"""The router's parts: each concern of delivering one message to one channel, in a module of
its own; roles/router.py orchestrates them."""
