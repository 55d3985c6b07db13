#!/bin/bash
# bench/side-by-side.sh - relayward against Postfix and the harness ceiling, same machine, same run.
#
# Builds relayward (release), configures it as the equivalent multi-tenant relay (one tenant with
# 1,000 verified domains tenant0001..tenant1000.example, an IP connector for the load source,
# smart host = smtp-sink on 127.0.0.1:2526), drives it with Postfix's smtp-source through the
# project's yardstick script (../shared/bench/postfix-relay.sh), then runs the same load against
# Postfix itself. Prints accept rate, end-to-end rate, CPU ms per message, peak RSS and the ratios.
#
# Usage: bash bench/side-by-side.sh          (as root: installs postfix, uses cgroup v1 cpuacct)
# Knobs: N, SESS, SIZE, REPS, N100, VARIANTS as in postfix-relay.sh; SKIP_POSTFIX=1; PORT=2587;
#        RELAYWARD_BIN=path (skip the build and use that binary)
# Only loopback traffic is generated.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
YARDSTICK=${YARDSTICK:-$ROOT/../shared/bench/postfix-relay.sh}
PORT=${PORT:-2587}
WORK=$(mktemp -d -t relayward-bench.XXXXXX)
RES_RW=$WORK/results-relayward.txt
RES_PF=$WORK/results-postfix.txt
CG=/sys/fs/cgroup/cpuacct
export N=${N:-20000} SESS=${SESS:-20} SIZE=${SIZE:-5120} REPS=${REPS:-3} N100=${N100:-2000}
export VARIANTS=${VARIANTS:-"1rcpt 1rcpt-keepalive 100rcpt"}

log() { echo "[$(date +%T)] $*" >&2; }

if ! command -v smtp-source >/dev/null; then
    log "installing postfix (for smtp-source / smtp-sink)"
    apt-get update -q >/dev/null
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix swaks >/dev/null
fi

if [ -z "${RELAYWARD_BIN:-}" ]; then
    log "building relayward (release)"
    (cd "$ROOT" && cargo build --release -q -p relayward)
fi
BIN=${RELAYWARD_BIN:-$ROOT/target/release/relayward}

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

# One sender sends all 20,000 messages: real per-sender limits would (rightly) restrict it. The
# limits stay on, with ceilings the load never reaches, so their checks still run per message.
[sender_limits]
external_recipients_per_hour = 1000000000
recipients_per_day = 1000000000
messages_per_minute = 1000000000
TOML
rw() { "$BIN" --config "$WORK/relayward.toml" "$@"; }
log "provisioning: 1 tenant, 1,000 verified domains, IP connector 127.0.0.0/8"
rw tenant add bench >/dev/null
for i in $(seq -w 1 1000); do echo "tenant$i.example"; done > "$WORK/domains.txt"
rw domain import bench "$WORK/domains.txt" --verified
rw connector add bench --name load --kind on-premises --ip 127.0.0.0/8 >/dev/null

mkdir -p $CG/bench_relay 2>/dev/null || true
sh -c 'echo $$ > "$0" 2>/dev/null; exec "$@"' "$CG/bench_relay/cgroup.procs" \
    "$BIN" --config "$WORK/relayward.toml" serve 2>"$WORK/relayward.log" &
RW_PID=$!
trap 'kill $RW_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do ss -ltn | grep -q "127.0.0.1:$PORT " && break; sleep 0.1; done
IDLE_RSS=$(awk '/VmRSS/{print $2}' /proc/$RW_PID/status)
log "relayward up (pid $RW_PID, idle RSS ${IDLE_RSS} kB)"

EXTERNAL=1 TARGET=127.0.0.1:$PORT TX_PER_100RCPT=1 RESULTS=$RES_RW WORK=$WORK/yard-rw \
    bash "$YARDSTICK" run >&2
PEAK_RSS=$(awk '/VmHWM/{print $2}' /proc/$RW_PID/status)
kill $RW_PID; wait $RW_PID 2>/dev/null || true
trap - EXIT

if [ "${SKIP_POSTFIX:-0}" != 1 ]; then
    log "same load against Postfix"
    RESULTS=$RES_PF WORK=$WORK/yard-pf bash "$YARDSTICK" all >&2 || true
fi

median() { { grep "^$1#" "$2" 2>/dev/null || true; } | { grep -o " $3=[0-9.]*" || true; } | cut -d= -f2 |
    sort -g | awk '{a[NR]=$1} END{if(NR==0){print "n/a"; exit}; print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="n/a"||b=="n/a"||b==0) print "n/a"; else printf "%.2f", a/b }'; }

echo
echo "== relayward vs Postfix, $(date -u +%F) on $(nproc) cores; medians of $REPS runs; $N msgs x ${SIZE} B, $SESS sessions"
for f in "$RES_RW" "$RES_PF"; do
    [ -f "$f" ] && grep -h "^harness-ceiling" "$f" | awk '{print "   " $1, $7, $9}'
done
printf "%-16s %-22s %12s %12s %10s\n" variant metric relayward postfix ratio
for v in $VARIANTS; do
    for k in accept_rate e2e_rate relay_cpu_ms_per_msg; do
        a=$(median "$v" "$RES_RW" $k); b=$(median "$v" "$RES_PF" $k)
        printf "%-16s %-22s %12s %12s %10s\n" "$v" "$k" "$a" "$b" "$(ratio "$a" "$b")"
    done
done
echo "relayward RSS: idle ${IDLE_RSS} kB, peak ${PEAK_RSS} kB"
echo "raw results: $RES_RW $RES_PF"
