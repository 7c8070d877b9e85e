"""The admin console's dashboard: the last 24 hours of sign-ins, what needs attention, and
the nodes serving the database with the duties each holds (as ``openmfa nodes`` shows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import Response

from backend.services.nodes import list_nodes
from backend.services.reports import Dashboard
from webportal.auth import require_admin
from webportal.routing import page
from webportal.state import services_of
from webportal.templating import render

# The chart's drawing box (SVG user units); the CSS scales it to the page's width.
CHART_WIDTH = 480
CHART_HEIGHT = 150
PLOT_TOP = 16  # room above the tallest bar for the "max" label
PLOT_BOTTOM = 124  # bars stand on this line; the hour labels go below it
BAR_STEP = CHART_WIDTH // 24
BAR_WIDTH = BAR_STEP - 4


@dataclass(frozen=True, slots=True)
class Bar:
    """One hour of the chart, in SVG coordinates."""

    x: int
    y: int
    height: int
    count: int
    hour: str  # "14:00"
    label: str  # shown under every sixth bar ("" otherwise)


def chart_bars(dashboard: Dashboard) -> tuple[list[Bar], int]:
    """The bars of the per-hour chart and the scale's top value (at least 1)."""
    top = max([1, *(h.count for h in dashboard.per_hour)])
    plot = PLOT_BOTTOM - PLOT_TOP
    bars = []
    for i, hour in enumerate(dashboard.per_hour):
        height = round(plot * hour.count / top)
        if hour.count and height < 2:
            height = 2  # a single sign-in stays visible next to hundreds
        label = hour.start.strftime("%H:%M")
        bars.append(
            Bar(
                x=i * BAR_STEP + 2,
                y=PLOT_BOTTOM - height,
                height=height,
                count=hour.count,
                hour=label,
                label=label if i % 6 == 0 else "",
            )
        )
    return bars, top


async def home(request: Request) -> Response:
    """The dashboard."""
    me = await require_admin(request)
    services = services_of(request)
    dashboard = await services.reports.dashboard()
    bars, top = chart_bars(dashboard)
    nodes = await list_nodes(
        services.db, services.clock(), timedelta(seconds=services.settings.node_timeout_seconds)
    )
    return await render(
        request,
        "admin/home.html",
        {
            "me": me.user,
            "d": dashboard,
            "bars": bars,
            "top": top,
            "nodes": nodes,
            "this_node": services.node_id,
            "timeout": f"{services.settings.node_timeout_seconds:g}",
            "chart": {
                "width": CHART_WIDTH,
                "height": CHART_HEIGHT,
                "bottom": PLOT_BOTTOM,
                "top": PLOT_TOP,
                "bar": BAR_WIDTH,
            },
        },
    )


routes = [page("/", home, name="admin_home")]
