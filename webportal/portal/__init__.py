"""The user portal (``/portal``). Page modules add their routes to :data:`routes` and their
navigation entries to :data:`NAV` (see notes/web-core-api.md)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from webportal.portal import (
    activate,
    devices,
    home,
    invite,
    oath,
    pin,
    sign_ins,
    signin,
    stepup,
    testpush,
)

#: (label, path) of the navigation shown to signed-in users, in order.
NAV: list[tuple[str, str]] = [
    ("Overview", "/portal/"),
    ("Activate", "/portal/activate"),
    ("Test", "/portal/test"),
    ("My devices", "/portal/devices"),
    ("PIN", "/portal/pin"),
    ("My sign-ins", "/portal/sign-ins"),
]

routes: list[BaseRoute] = [
    *home.routes,
    *signin.routes,
    *stepup.routes,
    *invite.routes,
    *activate.routes,
    *oath.routes,
    *pin.routes,
    *testpush.routes,
    *devices.routes,
    *sign_ins.routes,
]
