#!/bin/sh
# Entrypoint of the local Redis image (images/redis).
#
# docker-compose.yml's `command: ["redis-server", "--appendonly", "yes"]`
# replaces the image's CMD, never its ENTRYPOINT, so a flag the container
# needs is appended here rather than put in CMD:
#
#   --protected-mode no   Redis started without a config file refuses
#                         clients from other addresses ("connection reset"
#                         at the daemon) unless a password is set. Here
#                         only the compose `backend` network reaches it;
#                         workers are never attached to that network.
#
# Options after a config file win in redis-server, so the flag holds
# whatever the command says. The data lives in the working directory, /data.
set -e
case "$1" in
    -*) set -- redis-server "$@" ;;
esac
if [ "$1" = redis-server ]; then
    exec "$@" --protected-mode no
fi
exec "$@"
