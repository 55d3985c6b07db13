#!/bin/bash
# bench/directory-change.sh - a directory of 100,000 tenants and 1,000,000 verified domains
# (SQLite, the embedded default) under a running relayward: how long a change takes to apply
# (store read, apply, swap: the relay's own "directory changes applied" / "directory reloaded"
# log lines), and the relay's peak RSS during the changes against its steady RSS. First
# single-tenant changes (applied from the store's change log), then changes that force a whole
# reload (the relay's own SRS DKIM key is no single tenant's change), for comparison.
# Loopback only; nothing is sent.
# Usage: bash bench/directory-change.sh
# Knobs: TENANTS=100000 DOMAINS_PER_TENANT=10 CHANGES=20 (one-tenant changes) WHOLE=5 (reloads)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TENANTS=${TENANTS:-100000}
PER=${DOMAINS_PER_TENANT:-10}
CHANGES=${CHANGES:-20}
WHOLE=${WHOLE:-5}
PORT=${PORT:-2589}
APORT=${APORT:-8589}
WORK=$(mktemp -d -t relayward-dirchange.XXXXXX)
(cd "$ROOT" && cargo build --release -q -p relayward)
BIN=$ROOT/target/release/relayward
cat > "$WORK/relayward.toml" <<TOML
[server]
data_dir = "$WORK/data"
directory_poll_ms = 100
[[listener]]
address = "127.0.0.1:$PORT"
[admin]
address = "127.0.0.1:$APORT"
[srs]
domain = "srs.bench.example"
secrets = ["bench-secret-not-for-production"]
TOML
rw() { "$BIN" --config "$WORK/relayward.toml" "$@"; }
rw tenant list >/dev/null   # creates the database and its schema
echo "filling the store: $TENANTS tenants, $((TENANTS * PER)) verified domains"
python3 - "$WORK/data/relayward.db" "$TENANTS" "$PER" <<'PY'
import sqlite3, sys, time
db, n, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = sqlite3.connect(db)
now = int(time.time())
c.execute("BEGIN")
c.executemany(
    "INSERT INTO tenants (id, name, state, admin_emails, created_at, created_by) VALUES (?, ?, 'active', '[]', ?, 'bench')",
    ((i, f"tenant{i}", now) for i in range(1, n + 1)))
c.executemany(
    "INSERT INTO accepted_domains (tenant_id, domain, kind, match_subdomains, verified, verification_token, created_at, created_by, verified_at) "
    "VALUES (?, ?, 'authoritative', 0, 1, 'x', ?, 'bench', ?)",
    ((i, f"d{j}.tenant{i}.example", now, now) for i in range(1, n + 1) for j in range(per)))
c.execute("UPDATE directory_version SET version = version + 1")
c.execute("COMMIT")
PY
"$BIN" --config "$WORK/relayward.toml" serve 2>"$WORK/relayward.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 600); do ss -ltn | grep -q "127.0.0.1:$PORT " && break; sleep 0.1; done
sleep 3
rss() { awk '/VmRSS/{print $2}' /proc/$PID/status; }
STEADY=$(rss)
echo "relay up: steady RSS ${STEADY} kB"

measure() { # label, log line, how many, then the command making one change
    local label=$1 pattern=$2 count=$3; shift 3
    local before
    before=$(grep -c "$pattern" "$WORK/relayward.log" || true)
    echo 5 > /proc/$PID/clear_refs   # reset the peak RSS (VmHWM)
    for i in $(seq "$count"); do
        "$@" "$i" >/dev/null
        # wait for the relay to take it
        for _ in $(seq 600); do
            [ "$(grep -c "$pattern" "$WORK/relayward.log" || true)" -gt $((before + i - 1)) ] && break
            sleep 0.05
        done
    done
    local peak
    peak=$(awk '/VmHWM/{print $2}' /proc/$PID/status)
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/relayward.log" | grep "$pattern" | tail -n "$count" |
        sed -E 's/.*micros=([0-9]+).*/\1/' | sort -n |
        awk -v label="$label" -v steady="$STEADY" -v peak="$peak" '{v[NR]=$1} END {
            printf "%s: n=%d  p50 %.1f ms  max %.1f ms  peak RSS %d kB = %.2fx steady\n",
                label, NR, v[int((NR+1)/2)]/1000, v[NR]/1000, peak, peak/steady }'
}
one_domain() { rw domain add "tenant$((1000 + $1))" "new$1.example" --verified; }
srs_key() { rw srs dkim-key --selector "s$1"; }
measure "one tenant's domain added (change log)" "directory changes applied" "$CHANGES" one_domain
measure "whole reload (SRS key: no single tenant's change)" "directory reloaded" "$WHOLE" srs_key
echo "idle RSS after: $(rss) kB"
