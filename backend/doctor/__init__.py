"""``openmfa doctor``: checks of the whole set-up, each a pure function over gathered facts.

:mod:`.checks` turns facts into :class:`~backend.doctor.checks.Finding` lines and does no I/O;
:mod:`.gather` collects the facts (files, sockets, the database, DNS) and runs the checks;
:mod:`.settings_view` is ``openmfa config show``: every setting with its source, secrets masked.
"""
