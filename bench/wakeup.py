"""Answer stored -> long-poll waiter returns: p50 / p99 with many waiters parked.

In-process, on the embedded default (SQLite, in-process bus): N challenges are started, a
gateway-style waiter (`ChallengeService.wait`, what `GET ...?wait=` runs) parks on each, then
the device answers them one after another. For every challenge we take the time from the
moment the answer was committed and published to the moment its waiter returned with the
final state (which includes the waiter's own read of the stored outcome).

    python bench/wakeup.py [--waiters 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.config import load_settings
from backend.domain.challenge import Answer
from backend.domain.stepup import ADMINISTRATOR
from backend.events import InProcessOutcomeBus, Outcome
from backend.services import Services
from backend.services.context import Actor, SignInContext
from backend.store import migrations
from bench._http import percentile

ADMIN = Actor("bench")


class TimedBus(InProcessOutcomeBus):
    """The real bus, noting when each outcome was published."""

    def __init__(self) -> None:
        super().__init__()
        self.published_at: dict[str, float] = {}

    async def publish(self, outcome: Outcome) -> None:
        self.published_at.setdefault(outcome.challenge_id, time.perf_counter())
        await super().publish(outcome)


async def run(home: Path, waiters: int) -> None:
    bus = TimedBus()
    services = await Services.open(load_settings(home=home), bus=bus)
    try:
        await services.users.add(ADMIN, "alice")
        await services.policies.set(ADMIN, "challenge_ttl_seconds", "600")
        # One user with a thousand pushes at once: the fatigue guard would stop the fourth.
        for key in ("push_limit", "push_max_unanswered", "deny_limit_per_device"):
            await services.policies.set(ADMIN, key, "0")
        offer = await services.activation.create_code(ADMIN, ADMINISTRATOR, "alice")
        key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        activated = await services.activation.activate(ADMIN, offer.code, key, "reference")
        device = await services.devices.get(activated.device_id)
        ids = [
            (await services.challenges.start(ADMIN, "alice", "push", SignInContext("bench"))).id
            for _ in range(waiters)
        ]
        returned_at: dict[str, float] = {}

        async def wait(challenge_id: str) -> None:
            view = await services.challenges.wait(challenge_id, 300)
            returned_at[challenge_id] = time.perf_counter()
            assert view.state.value == "approved", view.state

        tasks = [asyncio.create_task(wait(cid)) for cid in ids]
        deadline = time.monotonic() + 60
        while bus.waiting < waiters:  # every waiter parked on the bus before the first answer
            if time.monotonic() > deadline:
                raise SystemExit(f"only {bus.waiting} of {waiters} waiters parked within 60 s")
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        for cid in ids:
            await services.challenges.answer(ADMIN, device, cid, Answer.APPROVE)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        latencies = [returned_at[cid] - bus.published_at[cid] for cid in ids]
        print(
            f"{waiters} waiters parked; {waiters} answers in {elapsed:.2f} s "
            f"({waiters / elapsed:,.0f} answers/s)"
        )
        print(
            f"answer stored -> waiter returned: p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.2f} ms, "
            f"max {max(latencies) * 1000:.2f} ms"
        )
    finally:
        await services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiters", type=int, default=1000)
    home = Path(tempfile.mkdtemp(prefix="openmfa-wakeup-"))
    migrations.upgrade(f"sqlite+aiosqlite:///{home / 'openmfa.db'}")
    asyncio.run(run(home, parser.parse_args().waiters))


if __name__ == "__main__":
    main()
