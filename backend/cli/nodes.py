"""``openmfa nodes [--json]``: the ``openmfa run`` processes serving this database.

One line per node: its id, name, host, pid, version, when it started, its last heartbeat,
whether it is alive, stopped (shut down cleanly) or dead (silent for longer than
``node_timeout_seconds``), and the duties (leases) it holds. Leases held by commands
(``cli:<host>:<pid>``, e.g. a running ``openmfa directory sync``) are listed after them.
The command itself registers no node.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from backend.cli.output import as_json, print_listing, table, when

if TYPE_CHECKING:  # loaded when a command runs, not for ``--help``
    from backend.services import Services
    from backend.services.context import Actor
    from backend.services.nodes import NodeView


def add_parser(groups: Any) -> None:
    """Register ``openmfa nodes`` on the top-level subcommands (``groups``)."""
    nodes = groups.add_parser(
        "nodes",
        help="list the nodes serving this database and the duties each holds",
        description="List every `openmfa run` process on this database: alive, stopped or "
        "dead (no heartbeat for node_timeout_seconds), since when, last seen, and which "
        "duties (leases) it holds. Stopped and dead nodes are pruned after 7 days.",
    )
    nodes.add_argument("--json", action="store_true", help="print JSON instead of a table")
    nodes.set_defaults(handler=list_nodes_now)


def describe(node: NodeView) -> dict[str, Any]:
    """One node for ``--json``."""
    return {
        "id": node.id,
        "name": node.name,
        "host": node.host,
        "pid": node.pid,
        "version": node.version,
        "started_at": node.started_at,
        "seen_at": node.seen_at,
        "stopped_at": node.stopped_at,
        "state": node.state.value,
        "duties": list(node.leases),
    }


def row(node: NodeView) -> list[Any]:
    """One node's table row."""
    return [
        node.id,
        node.name,
        node.host,
        node.pid,
        node.version,
        when(node.started_at),
        when(node.seen_at),
        node.state.value,
        ", ".join(node.leases) or "-",
    ]


HEADERS = ["ID", "NAME", "HOST", "PID", "VERSION", "STARTED", "LAST SEEN", "STATE", "DUTIES"]


async def list_nodes_now(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    """Print the nodes (and the leases commands hold)."""
    from datetime import timedelta

    from backend.services.leases import Leases
    from backend.services.nodes import list_nodes

    now = services.clock()
    nodes = await list_nodes(
        services.db, now, timedelta(seconds=services.settings.node_timeout_seconds)
    )
    known = {node.id for node in nodes}
    leases = await Leases(services.db, services.clock, "cli").current()
    others = [lease for lease in leases if lease.holder not in known]
    if args.json:
        print(
            as_json(
                {
                    "nodes": [describe(node) for node in nodes],
                    "other_leases": [
                        {"name": lease.name, "holder": lease.holder, "expires_at": lease.expires_at}
                        for lease in others
                    ],
                }
            )
        )
        return 0
    print_listing(
        False,
        nodes,
        describe,
        "no node has registered on this database (nodes register when `openmfa run` starts)",
        HEADERS,
        row,
    )
    if others:
        print()
        print(
            table(
                ["LEASE", "HELD BY", "UNTIL"],
                [[lease.name, lease.holder, when(lease.expires_at)] for lease in others],
            )
        )
    return 0
