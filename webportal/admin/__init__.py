"""The admin console (``/admin``). Page modules add their routes to :data:`routes` and their
navigation entries to :data:`NAV` (see notes/web-core-api.md)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from webportal.admin import audit as audit_log
from webportal.admin import bootstrap, directories, fraud, home, imports, policies, signin, users
from webportal.admin import clients as radius_clients
from webportal.admin import tokens as api_tokens

#: (label, path) of the navigation shown to signed-in administrators, in order.
NAV: list[tuple[str, str]] = [("Dashboard", "/admin/"), ("Users", "/admin/users")]
NAV += [("RADIUS clients", "/admin/clients"), ("API tokens", "/admin/tokens")]

routes: list[BaseRoute] = [*home.routes, *signin.routes, *bootstrap.routes]
routes += [*radius_clients.routes, *api_tokens.routes]
NAV += [
    ("Fraud reports", "/admin/fraud"),
    ("Audit log", "/admin/audit"),
    ("Policies", "/admin/policies"),
]
routes += [*users.routes, *fraud.routes, *audit_log.routes, *policies.routes]
NAV += [("Directories", "/admin/directories"), ("Import", "/admin/import")]
routes += [*directories.routes, *imports.routes]
