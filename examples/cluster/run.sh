#!/usr/bin/env bash
# Starts a local simpleio chat cluster: redis-server, three chat processes on ports 3001-3003
# and HAProxy on 3000 in front of them; stops them all on Ctrl-C. See README.md.
#
# With --redis-cluster, a Redis Cluster instead of one redis-server: six nodes (three masters,
# three replicas) on ports 7000-7005 (REDIS_CLUSTER_PORT sets the first), and the chat
# processes on RedisClusterStorage.
set -euo pipefail
mode=redis
if [ "${1:-}" = "--redis-cluster" ]; then mode=cluster; fi
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"

REDIS_PORT="${REDIS_PORT:-6390}"
REDIS_CLUSTER_PORT="${REDIS_CLUSTER_PORT:-7000}"
for tool in redis-server redis-cli haproxy cargo; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "run.sh: $tool is not installed (Debian: apt-get install -y redis-server haproxy)" >&2
    exit 1
  }
done

feature=redis
[ "$mode" = cluster ] && feature=redis-cluster
echo "run.sh: building the chat example with the $feature feature"
(cd "$root" && cargo build --quiet --features "$feature" --example chat)
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

if [ "$mode" = redis ]; then
  # No persistence here: a restarted Redis comes back empty and the clients resync. Add
  # `--appendonly yes` to keep messages across Redis restarts.
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$logs" >"$logs/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  storage=(REDIS_URL="redis://127.0.0.1:$REDIS_PORT/")
  where="Redis on $REDIS_PORT"
else
  # Six nodes in cluster mode, each in a folder of its own (its nodes.conf), no persistence.
  nodes=()
  urls=()
  for i in 0 1 2 3 4 5; do
    port=$((REDIS_CLUSTER_PORT + i))
    mkdir -p "$logs/redis-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --cluster-enabled yes --cluster-config-file "nodes-$port.conf" \
      --dir "$logs/redis-$port" >"$logs/redis-$port.log" 2>&1 &
    pids+=($!)
    nodes+=("127.0.0.1:$port")
    urls+=("redis://127.0.0.1:$port/")
  done
  for i in 0 1 2 3 4 5; do
    for _ in $(seq 50); do
      redis-cli -p $((REDIS_CLUSTER_PORT + i)) ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
    >"$logs/cluster-create.log" 2>&1
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_CLUSTER_PORT" cluster info | grep -q cluster_state:ok && break
    sleep 0.1
  done
  # Each acknowledged write waits for its master's replica (REDIS_REPLICA_ACKS=0 to turn off).
  storage=(REDIS_CLUSTER_URLS="$(IFS=,; echo "${urls[*]}")" REDIS_REPLICA_ACKS="${REDIS_REPLICA_ACKS:-1}")
  where="a Redis Cluster on $REDIS_CLUSTER_PORT-$((REDIS_CLUSTER_PORT + 5)) (3 masters, 3 replicas)"
fi

for n in 1 2 3; do
  env "${storage[@]}" PORT="300$n" SIMPLEIO_NODE="node$n" \
    "$chat" >"$logs/node$n.log" 2>&1 &
  pids+=($!)
done

haproxy -db -f haproxy.cfg >"$logs/haproxy.log" 2>&1 &
pids+=($!)

sleep 1
cat <<MSG
run.sh: up. $where, chat nodes on 3001-3003, HAProxy on 3000.
  open  http://127.0.0.1:3000/?user=ann  and  http://127.0.0.1:3000/?user=bob
  see which node answers:  curl -sI 'http://127.0.0.1:3000/?user=ann' | grep x-simpleio-node
  logs: $logs
Ctrl-C stops everything.
MSG
# Until Ctrl-C; a node that dies (try `kill` on one) leaves the others serving.
wait
