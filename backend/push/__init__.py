"""Push delivery: one interface (:mod:`backend.push.base`), a transport per service, and the
dispatcher that picks a transport per device, retries, and records what happened."""
