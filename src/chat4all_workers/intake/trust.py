"""Which Meta app signed a notification, and which of our accounts it may speak for.

A deployment serves many accounts under one Meta app or several, each app with its own secret
and verify token (accounts/). Meta posts an app's notifications to the callback URL set in that
app's dashboard: `/webhooks/{channel}/{app_id}` names the app, so only its secret is tried;
`/webhooks/{channel}` (one URL for every app) tries each app's secret in turn, in constant time
each (an HMAC-SHA256 of the body per app: microseconds, and apps are few). A signature no app's
secret makes is 401, before anything is parsed.

A valid signature proves which app sent it, not that the app may speak for the account the
notification names: an app's notifications count only for that app's accounts (disabled ones
too: statuses of what they sent before still land); changes for any other id are ignored as
`foreign_account` and still answered 200 (Meta retries anything else).

The single-account environment keeps working as before: an app of the environment
(`default-whatsapp`, `default-instagram`) whose channel has no provider id configured (a
webhooks-only container without WHATSAPP_PHONE_NUMBER_ID) speaks for every id of its channel.

The apps a path's POST may be signed by are worked out once per change of the directory (its
`generation`), not per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from chat4all_workers.accounts.model import Directory, MetaApp, default_app_id
from chat4all_workers.config import CHANNELS
from chat4all_workers.meta.signature import challenge_answer, signature_matches


class Trust:
    def __init__(self, directory: Directory) -> None:
        self._directory = directory
        self._generation = -1
        self._candidates: dict[tuple[str, str | None], list[MetaApp]] = {}

    def candidates(self, channel: str, app_id: str | None) -> list[MetaApp]:
        """The apps whose secret may have signed a POST to `channel`'s path: the path's app, or
        every app but the environment's app of another channel (the environment has one app
        secret per channel)."""
        generation = self._directory.generation
        if generation != self._generation:
            self._candidates.clear()
            self._generation = generation
        found = self._candidates.get((channel, app_id))
        if found is None:
            found = self._find_candidates(channel, app_id)
            if len(self._candidates) < 1024:  # paths name apps: bounded by what is sent
                self._candidates[channel, app_id] = found
        return found

    def _find_candidates(self, channel: str, app_id: str | None) -> list[MetaApp]:
        if app_id is None:
            others = {default_app_id(c) for c in CHANNELS if c != channel}
            return [
                app for app in self._directory.apps() if app.secret and app.app_id not in others
            ]
        app = self._directory.app(app_id)
        return [app] if app is not None and app.secret else []

    def signers(
        self, channel: str, app_id: str | None, body: bytes, signature: str | None
    ) -> frozenset[str]:
        """The apps whose secret signed `body` (empty: 401). Several only when apps share a
        secret (one HMAC per distinct secret)."""
        if not signature:
            return frozenset()
        verdicts: dict[str, bool] = {}
        signed = []
        for app in self.candidates(channel, app_id):
            secret = app.secret.get()
            if secret not in verdicts:
                verdicts[secret] = signature_matches(secret, body, signature)
            if verdicts[secret]:
                signed.append(app.app_id)
        return frozenset(signed)

    def challenge(self, channel: str, app_id: str | None, query: Mapping[str, str]) -> str | None:
        """The answer to Meta's verification GET (a known app's verify token), or None (403)."""
        if app_id is None:
            others = {default_app_id(c) for c in CHANNELS if c != channel}
            apps = [app for app in self._directory.apps() if app.app_id not in others]
        else:
            apps = [a for a in (self._directory.app(app_id),) if a is not None]
        for app in apps:
            answer = challenge_answer(query, app.verify_token.get())
            if answer is not None:
                return answer
        return None

    def ours(self, channel: str, apps: frozenset[str]) -> Callable[[str], bool]:
        """Whether a provider id named in a notification signed by `apps` is one of their
        accounts of `channel`."""
        directory = self._directory
        if default_app_id(channel) in apps and directory.find(channel, None) is None:
            return lambda provider_id: True  # the environment's app, no number configured

        def owned(provider_id: str) -> bool:
            account = directory.by_provider_id(channel, provider_id)
            return account is not None and account.app_id in apps

        return owned

    def account_key(self, channel: str, provider_id: str) -> str | None:
        """Our key of the account a notification came for (None: not one of ours)."""
        account = self._directory.by_provider_id(channel, provider_id)
        return None if account is None else account.key
