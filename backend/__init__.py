"""OpenMFA backend: domain, storage, push and HTTP APIs."""

__version__ = "0.1.0"
