#!/usr/bin/env bash
# Starts a local simpleio chat cluster: redis-server, three chat processes on ports 3001-3003
# and HAProxy on 3000 in front of them; stops them all on Ctrl-C. See README.md.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"

REDIS_PORT="${REDIS_PORT:-6390}"
for tool in redis-server haproxy cargo; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "run.sh: $tool is not installed (Debian: apt-get install -y redis-server haproxy)" >&2
    exit 1
  }
done

echo "run.sh: building the chat example with Redis support"
(cd "$root" && cargo build --quiet --features redis --example chat)
target="$(cd "$root" && cargo metadata --format-version 1 --no-deps \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
chat="$target/debug/examples/chat"

logs="$(mktemp -d -t simpleio-cluster-XXXXXX)"
pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "run.sh: stopping ${#pids[@]} processes"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "run.sh: logs kept in $logs"
}
trap stop INT TERM EXIT

# No persistence here: a restarted Redis comes back empty and the clients resync. Add
# `--appendonly yes` to keep messages across Redis restarts.
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$logs" >"$logs/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done

for n in 1 2 3; do
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT/" PORT="300$n" SIMPLEIO_NODE="node$n" \
    "$chat" >"$logs/node$n.log" 2>&1 &
  pids+=($!)
done

haproxy -db -f haproxy.cfg >"$logs/haproxy.log" 2>&1 &
pids+=($!)

sleep 1
cat <<MSG
run.sh: up. Redis on $REDIS_PORT, chat nodes on 3001-3003, HAProxy on 3000.
  open  http://127.0.0.1:3000/?user=ann  and  http://127.0.0.1:3000/?user=bob
  see which node answers:  curl -sI 'http://127.0.0.1:3000/?user=ann' | grep x-simpleio-node
  logs: $logs
Ctrl-C stops everything.
MSG
# Until Ctrl-C; a node that dies (try `kill` on one) leaves the others serving.
wait
