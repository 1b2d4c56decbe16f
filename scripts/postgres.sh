#!/usr/bin/env bash
# A throw-away PostgreSQL 16 + pgvector server for the tests and the bench, from the
# binaries of the pgserver wheel (pip install -e '.[postgres]'): Debian has no pgvector package.
#   scripts/postgres.sh start   initdb (once) and start on 127.0.0.1, a free port; prints the URL
#   scripts/postgres.sh stop    stop it (the data folder stays until the next `start --fresh`)
#   scripts/postgres.sh url     print the URL of the running server
# PostgreSQL will not run as root: as root the server runs as the user memedit-pg (made here).
# MEMEDIT_PG_DIR (default /tmp/memedit-pg) holds the data, the socket, the log and the URL.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
DIR="${MEMEDIT_PG_DIR:-/tmp/memedit-pg}"
PGBIN="$("$PY" -c "import importlib.util as u; print(u.find_spec('pgserver').submodule_search_locations[0])")/pginstall/bin"
RUN=()
if [ "$(id -u)" = 0 ]; then
    id memedit-pg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin memedit-pg
    RUN=(runuser -u memedit-pg --)
    if ! runuser -u memedit-pg -- test -x "$PGBIN/postgres"; then
        echo "$0: the user memedit-pg cannot reach $PGBIN (a folder above it is private); put the checkout" \
             "where other users may read it, or run this as an ordinary user" >&2
        exit 1
    fi
fi

start() {
    [ "${1:-}" = "--fresh" ] && { stop >/dev/null 2>&1 || true; rm -rf "$DIR"; }
    mkdir -p "$DIR"
    [ ${#RUN[@]} -gt 0 ] && chown memedit-pg "$DIR"
    if [ -f "$DIR/url" ] && "${RUN[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
        cat "$DIR/url"; return
    fi
    [ -d "$DIR/data" ] || "${RUN[@]}" "$PGBIN/initdb" -D "$DIR/data" -U memedit --auth=trust -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1
    port="$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")"
    "${RUN[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $DIR -c max_connections=200 -c fsync=on" start >/dev/null
    echo "postgresql://memedit@127.0.0.1:$port/postgres" > "$DIR/url"
    cat "$DIR/url"
}

stop() {
    [ -d "$DIR/data" ] && "${RUN[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null
    rm -f "$DIR/url"
}

case "${1:-}" in
    start) start "${2:-}" ;;
    stop) stop ;;
    url) cat "$DIR/url" ;;
    *) echo "usage: $0 start [--fresh] | stop | url" >&2; exit 2 ;;
esac
