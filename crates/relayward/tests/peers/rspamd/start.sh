#!/bin/sh
# Start a private rspamd for relayward integration tests.
#
#   start.sh PORT TMPDIR
#
# Starts rspamd (daemonized) with the config beside this script, a single
# scanner worker on 127.0.0.1:PORT, log/pid/socket/caches in TMPDIR.
# Exits 0 once GET /ping answers "pong" (prints the main pid), or non-zero
# with the log tail after ~30 s. Stop it with: kill -TERM "$(cat TMPDIR/rspamd.pid)"
set -eu

if [ "$#" -ne 2 ]; then
  echo "usage: $0 PORT TMPDIR" >&2
  exit 2
fi
port=$1
case "$port" in ''|*[!0-9]*) echo "bad port: $port" >&2; exit 2 ;; esac
if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then echo "bad port: $port" >&2; exit 2; fi
mkdir -p "$2"
state=$(cd "$2" && pwd)        # rspamd chdirs to / when it daemonizes
conf=$(cd "$(dirname "$0")" && pwd)

command -v rspamd >/dev/null 2>&1 || { echo "rspamd not installed (apt-get install rspamd)" >&2; exit 1; }
command -v curl >/dev/null 2>&1 || { echo "curl not installed" >&2; exit 1; }

url="http://127.0.0.1:$port/ping"
if curl -fs -m 1 "$url" >/dev/null 2>&1; then
  echo "something already answers on 127.0.0.1:$port" >&2
  exit 1
fi

# rspamd refuses to run workers as root unless told to (-i) or given -u/-g.
insecure=
[ "$(id -u)" -eq 0 ] && insecure=-i

tail_logs() {
  echo "--- $state/rspamd.stderr" >&2; tail -n 20 "$state/rspamd.stderr" >&2 2>/dev/null || true
  echo "--- $state/rspamd.log" >&2;    tail -n 30 "$state/rspamd.log" >&2 2>/dev/null || true
}

rm -f "$state/rspamd.pid"
# Without -f rspamd daemonizes and writes $state/rspamd.pid (options.pidfile).
# shellcheck disable=SC2086
if ! rspamd $insecure -c "$conf/rspamd.conf" \
  --var="RW_PORT=$port" --var="RW_STATEDIR=$state" --var="RW_CONFDIR=$conf" \
  >"$state/rspamd.stderr" 2>&1 </dev/null; then
  echo "rspamd failed to start" >&2
  tail_logs; exit 1
fi

i=0
while [ "$i" -lt 150 ]; do          # 150 * 0.2 s = 30 s
  pid=$(cat "$state/rspamd.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
    echo "rspamd (pid $pid) exited during startup" >&2
    tail_logs; exit 1
  fi
  if [ -n "$pid" ]; then
    case "$(curl -fs -m 1 "$url" 2>/dev/null || true)" in
      pong*) echo "$pid"; exit 0 ;;    # the body is "pong\r\n"
    esac
  fi
  sleep 0.2
  i=$((i + 1))
done
echo "rspamd did not answer on $url within 30 s" >&2
tail_logs
if [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null; then
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
fi
exit 1
