"""The RADIUS bridge: gateways speak RADIUS to it, it relays to the backend gateway API."""
