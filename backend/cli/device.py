"""``openmfa device ...``: the reference authenticator, used like a phone app."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from backend.cli.output import as_json, clean, table

if TYPE_CHECKING:  # httpx and cryptography: imported when a device command runs
    from backend.authenticator.client import AppClient


def _client(store: Path) -> AppClient:
    from backend.authenticator.client import AppClient, load_store

    return AppClient(load_store(store))


def activate(args: argparse.Namespace) -> int:
    from backend.authenticator.client import AppClient, AuthenticatorError, save_store

    # Check the store before redeeming the single-use code, so a bad path wastes no code.
    if args.store.exists() and not args.force:
        raise AuthenticatorError(f"{args.store} exists; pass --force to replace it")
    if not args.store.resolve().parent.is_dir():
        raise AuthenticatorError(f"cannot write {args.store}: its directory does not exist")
    device = AppClient().activate(
        args.uri, args.name or "", args.platform, args.pin, args.push_token, args.key_type
    )
    save_store(args.store, device)
    print(f"activated device {device.device_id} for {device.user} at {device.url}")
    print(f"key and seed saved to {args.store} (mode 0600)")
    return 0


def pending(args: argparse.Namespace) -> int:
    challenges = _client(args.store).pending()
    if args.json:
        print(as_json(challenges))
    elif not challenges:
        print("no pending challenges")
    else:
        print(
            table(
                ["CHALLENGE", "WHAT", "EXPIRES", "NUMBER NEEDED"],
                [
                    [
                        c["id"],
                        c["display"],
                        c["expires_at"],
                        "yes" if c["number_required"] else "no",
                    ]
                    for c in challenges
                ],
            )
        )
    return 0


def answer(args: argparse.Namespace) -> int:
    state = _client(args.store).answer(args.challenge_id, args.answer, args.pin, args.number)
    print(f"challenge {args.challenge_id}: {state}")
    return 0


def code(args: argparse.Namespace) -> int:
    print(_client(args.store).code())
    return 0


def watch(args: argparse.Namespace) -> int:
    """Poll and answer what arrives, like a user who always taps the same button."""
    client = _client(args.store)
    answered = 0
    seen: set[str] = set()
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while args.count is None or answered < args.count:
        if deadline is not None and time.monotonic() >= deadline:
            print(f"stopped after {args.timeout} s with {answered} answered")
            return 0 if args.count is None else 1
        for challenge in client.pending():
            if challenge["id"] in seen:
                continue
            seen.add(challenge["id"])
            state = client.answer(challenge["id"], args.auto, args.pin, args.number)
            answered += 1
            print(clean(f"{challenge['id']}: {challenge['display']} -> {state}"), flush=True)
            if args.count is not None and answered >= args.count:
                break
        else:
            time.sleep(args.interval)
    return 0


def deactivate(args: argparse.Namespace) -> int:
    _client(args.store).deactivate()
    print("device removed on the server")
    return 0
