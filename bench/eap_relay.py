"""EAP-PEAP sign-ins through the RADIUS bridge's relay, beside the same sign-ins straight to
FreeRADIUS: what the relay costs per RADIUS round trip.

Real parts throughout: ``eapol_test`` (wpa_supplicant) as the supplicant, FreeRADIUS 3.2 as
the EAP server (PEAP with EAP-MSCHAPv2 inside, a throw-away certificate), the bridge and a
backend on loopback (the test suite's ``RadiusLab``: backend and bridge in this process,
each on its own event loop thread). Three runs of the same sign-ins:

(a) ``direct``: eapol_test -> FreeRADIUS;
(b) ``relay``:  eapol_test -> bridge -> FreeRADIUS, users exempt from the second factor
    (every round relayed, no push): the relay alone;
(c) ``push``:   as (b) with the push, approved at once by an app answering from a thread
    that polls the backend every 10 ms (the reaction of a very fast phone).

Each worker signs in its own user with its own Calling-Station-Id, ``--workers`` at once.
Printed: sign-ins per second, latency p50 / p99, RADIUS round trips per sign-in (from
eapol_test's output), and (b - a) / round trips: the bridge's cost per relayed round trip.
Every sign-in must end in SUCCESS with "MPPE keys OK" (the keys re-encrypted by the bridge
match the ones the supplicant derived), or the run fails.

    python bench/eap_relay.py [--signins 40] [--workers 2]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench._http import percentile  # noqa: E402 - after the sys.path fix above
from tests.support.bridge import RadiusLab  # noqa: E402
from tests.support.eap import eap_upstream, eapol_config, eapol_test  # noqa: E402
from tests.support.freeradius import free_udp_port  # noqa: E402

UPSTREAM_SECRET = "bench-eap-upstream-secret"  # noqa: S105 - a bench's throw-away secret
GATEWAY_SECRET = "bench-eap-gateway-secret"  # noqa: S105 - a bench's throw-away secret


def run(
    label: str,
    signins: int,
    workers: int,
    one: Callable[[int], tuple[float, int]],
) -> dict[str, float]:
    """``signins`` calls of ``one(worker)`` spread over ``workers`` threads."""
    latencies: list[float] = []
    rounds: list[int] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        for _ in range(signins // workers):
            took, trips = one(index)
            with lock:
                latencies.append(took)
                rounds.append(trips)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(worker, i) for i in range(workers)]:
            future.result()
    elapsed = time.perf_counter() - started
    latencies.sort()
    figures = {
        "rate": len(latencies) / elapsed,
        "p50": percentile(latencies, 0.5) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "rounds": sum(rounds) / len(rounds),
    }
    print(
        f"{label:<8} {figures['rate']:7.1f} sign-ins/s   p50 {figures['p50']:7.1f} ms   "
        f"p99 {figures['p99']:7.1f} ms   {figures['rounds']:.1f} round trips each",
        flush=True,
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signins", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    workers = max(1, args.workers)
    home = Path(tempfile.mkdtemp(prefix="openmfa-bench-eap-"))
    users = [f"bench{i}" for i in range(workers)]
    passwords = {user: f"{user}-password" for user in users}
    port = free_udp_port()
    (home / "lab").mkdir()
    with (
        eap_upstream(port, home / "fr", users=passwords, secret=UPSTREAM_SECRET) as upstream,
        RadiusLab(home / "lab") as lab,
    ):
        configs = [
            eapol_config(
                home / f"{user}.conf",
                "peap",
                identity=user,
                password=passwords[user],
                ca_cert=home / "fr" / "ca.pem",
            )
            for user in users
        ]

        def signer(
            target_port: int, secret: str, source: str
        ) -> Callable[[int], tuple[float, int]]:
            def one(index: int) -> tuple[float, int]:
                started = time.perf_counter()
                result = eapol_test(
                    configs[index],
                    target_port,
                    secret,
                    source=source,
                    mac=f"02:00:00:00:01:{index:02x}",
                )
                took = time.perf_counter() - started
                if not (result.success and result.mppe_ok):
                    raise SystemExit(f"sign-in failed:\n{result.output[-3000:]}")
                trips = len(re.findall(r"^Received RADIUS message", result.output, re.M))
                return took, trips

            return one

        common: dict[str, Any] = {
            "mode": "push",
            "primary": "radius",
            "upstream_host": "127.0.0.1",
            "upstream_port": port,
            "upstream_secret": UPSTREAM_SECRET,
            "upstream_timeout": 5.0,
        }
        lab.client("bench-exempt", ["127.0.0.2"], GATEWAY_SECRET, exempt_users=users, **common)
        lab.client("bench-push", ["127.0.0.3"], GATEWAY_SECRET, **common)
        phones = []
        for user in users:
            # The push-fatigue guard would turn the fourth push in 5 minutes into a code
            # request (which EAP cannot carry): off for the bench users.
            lab.api.add_user(user, push_limit=0, push_max_unanswered=0)
            phones.append(lab.api.device(user))

        print(f"EAP-PEAP/MSCHAPv2, {args.signins} sign-ins, {workers} at once", flush=True)
        direct = run("direct", args.signins, workers, signer(port, UPSTREAM_SECRET, "127.0.0.1"))
        relay = run("relay", args.signins, workers, signer(lab.port, GATEWAY_SECRET, "127.0.0.2"))

        stop = threading.Event()

        def approver() -> None:
            while not stop.is_set():
                for phone in phones:
                    for pending in phone.pending():
                        phone.answer(pending["id"], "approve")
                stop.wait(0.01)

        thread = threading.Thread(target=approver, daemon=True)
        thread.start()
        try:
            push = run("push", args.signins, workers, signer(lab.port, GATEWAY_SECRET, "127.0.0.3"))
        finally:
            stop.set()
            thread.join(5)
        del upstream
    per_trip = (relay["p50"] - direct["p50"]) / max(direct["rounds"], 1)
    print(
        f"relay cost: {relay['p50'] - direct['p50']:.1f} ms per sign-in at p50, "
        f"{per_trip:.2f} ms per round trip; push adds "
        f"{push['p50'] - relay['p50']:.1f} ms at p50 (approval polled every 10 ms)"
    )


if __name__ == "__main__":
    main()
