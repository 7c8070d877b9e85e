"""Local stand-ins for the push services (APNs, FCM) that the real client libraries talk to
over real sockets on 127.0.0.1, checking the wire format they receive.

They live in ``tests/`` on purpose: the product never imports them.
"""
