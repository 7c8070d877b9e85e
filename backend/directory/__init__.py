"""Directories (Active Directory, OpenLDAP): who the users are, and their passwords.

- :mod:`.config`: one directory's settings, as stored (pure data, no I/O).
- :mod:`.entries`: a user as the directory describes it, the unit a sync plans with.
- :mod:`.reader`: the interface every directory connection offers (the LDAP adapter and the
  tests' fakes implement it), and what its answers mean.
"""
