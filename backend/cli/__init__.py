"""The ``openmfa`` command line."""
