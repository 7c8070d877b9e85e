#!/bin/sh
# The image's entrypoint. `openmfa run` (the default command) first brings the database
# schema up to date, then *replaces* this shell (exec), so the server is the process the
# container runtime signals: SIGTERM stops it cleanly with exit status 0.
# Any other command runs as given: `docker run --rm -it IMAGE openmfa user list`.
set -eu

# Options alone (`docker run IMAGE --port 9000`) are options of `openmfa run`.
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- openmfa run "$@"
fi

if [ "$1" = openmfa ] && [ "${2:-}" = run ]; then
  home="${OPENMFA_HOME:-/var/lib/openmfa}"
  # The usual first-run failure: a bind-mounted directory owned by someone else.
  if ! mkdir -p "$home" 2>/dev/null || [ ! -w "$home" ] || [ ! -x "$home" ]; then
    echo "openmfa-entrypoint: error: the data directory $home is not writable by uid $(id -u);" \
      "give it to that user (chown $(id -u):$(id -g) on the host directory) or use a named volume" >&2
    exit 1
  fi
  openmfa db upgrade
fi
exec "$@"
