#!/bin/bash
# bench/profile.sh - CPU profile of one relayward build under the 1-recipient load.
#
# Starts the build configured as bench/side-by-side.sh does (1 tenant, 1,000 verified domains,
# IP connector, smart host = smtp-sink on 127.0.0.1:2526), sends 1,000 warm-up messages, then
# records `perf record -e cpu-clock -g` on the relay while smtp-source sends N more, and prints
# where the samples went: kernel/user, by thread, and the top symbols.
#
# Usage: bash bench/profile.sh [BIN]     (default: target/release/relayward; as root)
# Knobs: N=10000 SESS=20 SIZE=5120 PORT=2597 OUT=perf.data (kept for `perf report -i`)
# Only loopback traffic is generated.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/relayward}
N=${N:-10000} SESS=${SESS:-20} SIZE=${SIZE:-5120} PORT=${PORT:-2597}
WORK=$(mktemp -d -t relayward-profile.XXXXXX)
OUT=${OUT:-$WORK/perf.data}
cat > "$WORK/relayward.toml" <<TOML
[server]
hostname = "relay.bench.local"
data_dir = "$WORK/data"
[[listener]]
address = "127.0.0.1:$PORT"
[delivery]
smart_host = "127.0.0.1:2526"
[limits]
max_connections_per_ip = 10000
[sender_limits]
external_recipients_per_hour = 1000000000
recipients_per_day = 1000000000
messages_per_minute = 1000000000
TOML
rw() { "$BIN" --config "$WORK/relayward.toml" "$@"; }
rw tenant add bench >/dev/null
for i in $(seq -w 1 1000); do echo "tenant$i.example"; done > "$WORK/domains.txt"
rw domain import bench "$WORK/domains.txt" --verified >/dev/null
rw connector add bench --name load --kind on-premises --ip 127.0.0.0/8 >/dev/null
smtp-sink -u nobody -c 127.0.0.1:2526 1000 >/dev/null 2>&1 &
SINK=$!
"$BIN" --config "$WORK/relayward.toml" serve 2>"$WORK/relayward.log" &
PID=$!
trap 'kill $PID $SINK 2>/dev/null || true' EXIT
for _ in $(seq 100); do ss -ltn | grep -q "127.0.0.1:$PORT " && break; sleep 0.1; done
src() { smtp-source -M client.bench.local -N -s "$SESS" -l "$SIZE" -f bench@tenant0500.example \
    -t user@dest.example "$@" "127.0.0.1:$PORT"; }
src -m 1000
sleep 1
perf record -e cpu-clock -F 999 -g -o "$OUT" -p $PID 2>/dev/null &
PERF=$!
sleep 0.5
c0=$(awk '{print $14+$15}' /proc/$PID/stat); t0=$EPOCHREALTIME
src -m "$N"
t1=$EPOCHREALTIME
sleep 1
c1=$(awk '{print $14+$15}' /proc/$PID/stat)
kill -INT $PERF; wait $PERF 2>/dev/null || true
awk -v a="$t0" -v b="$t1" -v n="$N" -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN{printf "%d msgs: %.1f msgs/s accepted, %.3f CPU ms per message (user+sys, incl. the delivery tail)\n", n, n/(b-a), c/hz*1000/n}'
report() { perf report -i "$OUT" --no-children -g none "$@" 2>/dev/null | grep -v '^#' | grep '%' || true; }
echo "-- kernel / user"
report --sort dso | awk '{ if ($2 ~ /kernel/) k += $1; else u += $1 } END { printf "kernel %.1f %%, user %.1f %%\n", k, u }'
echo "-- by thread"
report --sort comm | head -8
echo "-- top symbols"
report --sort sym | head -25
echo "perf data: $OUT"
