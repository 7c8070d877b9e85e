"""Telling people: e-mail to the support address when a user reports fraud."""
