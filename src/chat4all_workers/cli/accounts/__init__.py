"""`chat4all-workers accounts`: the sending accounts and Meta apps kept in PostgreSQL (many
senders, docs/operations.md "Onboarding a business").

Secrets (tokens, app secrets, verify tokens) come from a file or standard input, never from
argv (which `ps` and shell histories show), and are never printed: `list` says `set`. Each is
sealed with the accounts key before it leaves the process (accounts/sealing.py). `new-key` is
the one command that prints key material, and the key it prints is a new one.

Input is read and checked before anything connects, so a bad argument or an unreadable secret
is exit code 2 with one line, as is a missing accounts key; a database problem is exit 1.

The package: `parsers.py` (the arguments of each action), `inputs.py` (what the operator gives,
checked: keys, ids, the accounts key, the secrets read), `actions.py` (what each action does),
`listing.py` (`list`'s table and JSON document).
"""
