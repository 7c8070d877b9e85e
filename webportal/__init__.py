"""The user portal (``/portal``) and the admin console (``/admin``): Starlette + Jinja2 pages on
the backend's services. See docs/portal.md for operators and notes/web-core-api.md for how
pages are added."""
