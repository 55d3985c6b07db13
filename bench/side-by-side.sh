#!/bin/bash
# bench/side-by-side.sh - relayward against Postfix and the harness ceiling, same machine, same run.
#
# Builds relayward (release), configures it as the equivalent multi-tenant relay (one tenant with
# 1,000 verified domains tenant0001..tenant1000.example, an IP connector for the load source,
# smart host = smtp-sink on 127.0.0.1:2526), drives it with Postfix's smtp-source through the
# project's yardstick script (../shared/bench/postfix-relay.sh), then runs the same load against
# Postfix itself. Prints accept rate, end-to-end rate, CPU ms per message, MB/s of the 1 MB load,
# idle transaction latency, peak RSS and the ratios.
#
# Usage: bash bench/side-by-side.sh          (as root: installs postfix, uses cgroup v1 cpuacct)
# Knobs: N, SESS, SIZE, REPS, N100, VARIANTS as in postfix-relay.sh; SKIP_POSTFIX=1; PORT=2587;
#        RELAYWARD_BIN=path (skip the build and use that binary);
#        BASE_BIN=path (a second relayward build, e.g. the previous commit's, measured in the same
#        run: a before/after column next to the current build);
#        BIG=0 skips the 1 MB load (BIG_N=400 messages of BIG_SIZE=1048576 B over BIG_SESS=4
#        sessions, 1 recipient, new connection each); LATENCY=0 skips the idle latency runs.
# Only loopback traffic is generated.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
YARDSTICK=${YARDSTICK:-$ROOT/../shared/bench/postfix-relay.sh}
PORT=${PORT:-2587}
WORK=$(mktemp -d -t relayward-bench.XXXXXX)
RES_PF=$WORK/results-postfix.txt
CG=/sys/fs/cgroup/cpuacct
export N=${N:-20000} SESS=${SESS:-20} SIZE=${SIZE:-5120} REPS=${REPS:-3} N100=${N100:-2000}
export VARIANTS=${VARIANTS:-"1rcpt 1rcpt-keepalive 100rcpt"}
BIG=${BIG:-1} BIG_N=${BIG_N:-400} BIG_SESS=${BIG_SESS:-4} BIG_SIZE=${BIG_SIZE:-1048576}
LATENCY=${LATENCY:-1}

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

# The 1 MB load through the yardstick's `run`, its rows relabelled "1mb#<n>".
big_run() {  # results-file yardstick-env...
    local res=$1; shift
    [ "$BIG" = 1 ] || return 0
    log "1 MB load: $BIG_N x $BIG_SIZE B over $BIG_SESS sessions"
    env "$@" N="$BIG_N" SESS="$BIG_SESS" SIZE="$BIG_SIZE" VARIANTS=1rcpt RESULTS="$res.big" \
        bash "$YARDSTICK" run >&2 || true
    sed -n 's/^1rcpt#/1mb#/p' "$res.big" >> "$res"
}

# One relayward build under the whole load: fresh data directory, provisioned, in the cgroup.
relay_half() {  # name binary
    local name=$1 bin=$2 dir=$WORK/$1 res=$WORK/results-$1.txt
    mkdir -p "$dir"
    cat > "$dir/relayward.toml" <<TOML
[server]
hostname = "relay.bench.local"
data_dir = "$dir/data"

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
    rw() { "$bin" --config "$dir/relayward.toml" "$@"; }
    log "$name: provisioning 1 tenant, 1,000 verified domains, IP connector 127.0.0.0/8"
    rw tenant add bench >/dev/null
    for i in $(seq -w 1 1000); do echo "tenant$i.example"; done > "$dir/domains.txt"
    rw domain import bench "$dir/domains.txt" --verified
    rw connector add bench --name load --kind on-premises --ip 127.0.0.0/8 >/dev/null

    mkdir -p $CG/bench_relay 2>/dev/null || true
    sh -c 'echo $$ > "$0" 2>/dev/null; exec "$@"' "$CG/bench_relay/cgroup.procs" \
        "$bin" --config "$dir/relayward.toml" serve 2>"$dir/relayward.log" &
    local pid=$!
    trap "kill $pid 2>/dev/null || true" EXIT
    for _ in $(seq 100); do ss -ltn | grep -q "127.0.0.1:$PORT " && break; sleep 0.1; done
    local idle_rss; idle_rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
    log "$name up (pid $pid, idle RSS ${idle_rss} kB)"
    local yard=(EXTERNAL=1 TARGET=127.0.0.1:$PORT TX_PER_100RCPT=1 WORK=$dir/yard)
    env "${yard[@]}" RESULTS="$res" bash "$YARDSTICK" run >&2
    big_run "$res" "${yard[@]}"
    if [ "$LATENCY" = 1 ]; then
        env "${yard[@]}" RESULTS="$res" bash "$YARDSTICK" latency >&2 || true
    fi
    local peak_rss; peak_rss=$(awk '/VmHWM/{print $2}' /proc/$pid/status)
    kill $pid; wait $pid 2>/dev/null || true
    trap - EXIT
    # The spool and the trace database of a full run take a gigabyte or so: only the figures stay.
    rm -rf "$dir/data"
    echo "$name RSS: idle ${idle_rss} kB, peak ${peak_rss} kB" >> "$WORK/rss.txt"
}

NAMES="relayward"
relay_half relayward "$BIN"
if [ -n "${BASE_BIN:-}" ]; then
    NAMES="relayward base"
    relay_half base "$BASE_BIN"
fi

if [ "${SKIP_POSTFIX:-0}" != 1 ]; then
    log "same load against Postfix"
    pf=(WORK=$WORK/yard-pf RESULTS=$RES_PF)
    {
        env "${pf[@]}" bash "$YARDSTICK" setup &&
            env "${pf[@]}" bash "$YARDSTICK" run &&
            big_run "$RES_PF" "${pf[@]}" &&
            { [ "$LATENCY" != 1 ] || env "${pf[@]}" bash "$YARDSTICK" latency; }
    } >&2 || log "the Postfix half failed"
    env "${pf[@]}" bash "$YARDSTICK" teardown >&2 || true
fi

median() { { grep "^$1#" "$2" 2>/dev/null || true; } | { grep -o " $3=[0-9.]*" || true; } | cut -d= -f2 |
    sort -g | awk '{a[NR]=$1} END{if(NR==0){print "n/a"; exit}; print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="n/a"||b=="n/a"||b==0) print "n/a"; else printf "%.2f", a/b }'; }
mbps() { awk -v r="$1" -v s="$BIG_SIZE" 'BEGIN{ if (r=="n/a") print "n/a"; else printf "%.1f", r*s/1e6 }'; }
latency() { { grep -h "^idle 1-msg transaction" "$1" 2>/dev/null || true; } |
    sed -n "s/.*relay p50 \([0-9.]*\) p90 \([0-9.]*\) p99 \([0-9.]*\).*/\\$2/p" | tail -1; }

echo
echo "== relayward vs Postfix, $(date -u +%F) on $(nproc) cores; medians of $REPS runs; $N msgs x ${SIZE} B, $SESS sessions"
for f in $NAMES postfix; do
    [ -f "$WORK/results-$f.txt" ] && grep -h "^harness-ceiling" "$WORK/results-$f.txt" | awk -v n="$f" '{print "   " n, $1, $7, $9}'
done
header() { printf "%-16s %-22s" variant metric; for n in $NAMES postfix; do printf " %12s" "$n"; done
    for n in $NAMES; do printf " %10s" "$n/pf"; done; [ -n "${BASE_BIN:-}" ] && printf " %10s" "rw/base"; echo; }
row() {  # variant metric values...
    local v=$1 k=$2; shift 2
    local vals=("$@") pf=${!#}
    printf "%-16s %-22s" "$v" "$k"; for x in "${vals[@]}"; do printf " %12s" "$x"; done
    for ((i = 0; i < ${#vals[@]} - 1; i++)); do printf " %10s" "$(ratio "${vals[$i]}" "$pf")"; done
    [ -n "${BASE_BIN:-}" ] && printf " %10s" "$(ratio "${vals[0]}" "${vals[1]}")"
    echo
}
header
extra=""; [ "$BIG" = 1 ] && extra=1mb
for v in $VARIANTS $extra; do
    for k in accept_rate e2e_rate relay_cpu_ms_per_msg; do
        vals=(); for n in $NAMES postfix; do vals+=("$(median "$v" "$WORK/results-$n.txt" $k)"); done
        row "$v" "$k" "${vals[@]}"
    done
    if [ "$v" = 1mb ]; then
        vals=(); for n in $NAMES postfix; do vals+=("$(mbps "$(median 1mb "$WORK/results-$n.txt" e2e_rate)")"); done
        row 1mb e2e_MB_per_s "${vals[@]}"
    fi
done
if [ "$LATENCY" = 1 ]; then
    for p in 1:p50 2:p90 3:p99; do
        vals=(); for n in $NAMES postfix; do vals+=("$(latency "$WORK/results-$n.txt" "${p%%:*}")"); done
        row idle-latency "${p#*:}_ms" "${vals[@]}"
    done
    grep -h "^sequential mean\|^idle end-to-end" $WORK/results-*.txt 2>/dev/null | sed 's/^/   /' || true
fi
cat "$WORK/rss.txt"
echo "raw results: $WORK/results-*.txt"
