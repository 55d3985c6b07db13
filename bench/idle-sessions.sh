#!/bin/bash
# bench/idle-sessions.sh - hold 10,000 idle SMTP sessions (greeted, after EHLO) open against one
# relayward and report its RSS before, during and after. Loopback only.
# Usage: bash bench/idle-sessions.sh   Knobs: SESSIONS=10000 PORT=2588
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SESSIONS=${SESSIONS:-10000}
PORT=${PORT:-2588}
WORK=$(mktemp -d -t relayward-idle.XXXXXX)
ulimit -n "$(ulimit -Hn)"
(cd "$ROOT" && cargo build --release -q -p relayward)
BIN=$ROOT/target/release/relayward
cat > "$WORK/relayward.toml" <<TOML
[server]
data_dir = "$WORK/data"
[[listener]]
address = "127.0.0.1:$PORT"
[limits]
max_connections = $((SESSIONS + 100))
max_connections_per_ip = $((SESSIONS + 100))
TOML
"$BIN" --config "$WORK/relayward.toml" serve 2>"$WORK/relayward.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do ss -ltn | grep -q "127.0.0.1:$PORT " && break; sleep 0.1; done
rss() { awk '/VmRSS/{print $2}' /proc/$PID/status; }
IDLE=$(rss)
python3 - "$PORT" "$SESSIONS" "$PID" <<'PY'
import asyncio, sys, resource
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
async def one(i, held):
    # spread the client side over 127.0.0.x so no source-port range runs out
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % 200}", 0))
    await r.readline()
    w.write(b"EHLO idle.test\r\n")
    while True:
        line = await r.readline()
        if line[3:4] == b" ":
            break
    held.append((r, w))
async def main():
    held = []
    sem = asyncio.Semaphore(500)
    async def guarded(i):
        async with sem:
            await one(i, held)
    await asyncio.gather(*(guarded(i) for i in range(n)))
    await asyncio.sleep(2)
    print(f"sessions_open={len(held)} relay_rss_kb={rss()}")
    for r, w in held:
        w.close()
asyncio.run(main())
PY
sleep 2
echo "idle_rss_kb=$IDLE after_close_rss_kb=$(rss) peak_rss_kb=$(awk '/VmHWM/{print $2}' /proc/$PID/status)"
