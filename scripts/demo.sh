#!/usr/bin/env bash
# `make demo` / `make demo-stop` / `make demo-clean`: a local JetStream nats-server with
# device identity (ADR-023: `harmony-fleet auth init`, the auth callout), the fleet
# layout, an auto-approve enrollment token, and the agent enrolling itself with its own
# key, shown Ready by `harmony-fleet devices`.
#
#   scripts/demo.sh start | stop | clean
#
# Everything the demo writes stays under DEMO_DIR (default /tmp/harmony-demo): the
# agent's config, state dir and health file, the nats-server store, logs, pid files.
# So a real install or a test run on the same machine is never read or overwritten.
#   NATS_PORT       the demo's nats-server port (default 4222)
#   DEMO_DEVICE_ID  the demo device's id (default: unset, so /etc/machine-id)
# Each pid file holds "PID START-TIME": stop signals a process only while it is still
# the one the demo started. A journald is started only when none runs, and only that
# one is stopped again; a journald that others use is never touched.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
DEMO_DIR=$(realpath -m "${DEMO_DIR:-/tmp/harmony-demo}")
NATS_PORT=${NATS_PORT:-4222}
MARK=$DEMO_DIR/.harmony-demo
CFG=$DEMO_DIR/agent.toml
AUTH=$DEMO_DIR/auth
JOURNALD=/lib/systemd/systemd-journald
export NATS_URL=nats://127.0.0.1:$NATS_PORT
# The operator's key (auth init makes it): every harmony-fleet call below uses it.
FLEET=("$BIN/harmony-fleet" --nkey "$AUTH/operator.nk")

die() {
  echo "demo: error: $*" >&2
  exit 1
}
trap 'echo "demo: failed (scripts/demo.sh line $LINENO)" >&2' ERR

# The start time of a live process (field 22 of /proc/PID/stat), or nothing.
start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) } # the fields after "PID (comm) ": comm may hold spaces
  # shellcheck disable=SC2086
  set -- $stat
  [[ $1 != Z ]] || return 1 # a zombie has already exited
  echo "${20}"
}

record() { # NAME PID
  echo "$2 $(start_time "$2")" >"$DEMO_DIR/$1.pid"
}

# The pid of the demo's NAME when it still runs as the process the demo started.
ours() {
  local pid started
  [[ -f $DEMO_DIR/$1.pid ]] || return 1
  read -r pid started <"$DEMO_DIR/$1.pid" || return 1
  [[ -n ${pid:-} && -n ${started:-} && $(start_time "$pid" || true) == "$started" ]] || return 1
  echo "$pid"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null; }
journald_up() { systemd-cat true 2>/dev/null; }

# Stop the demo's NAME: SIGTERM, wait up to SECONDS for it to exit, then SIGKILL.
stop_one() { # NAME SECONDS WHAT
  local pid
  if ! pid=$(ours "$1"); then
    if [[ -f $DEMO_DIR/$1.pid ]]; then
      echo "== $3: no longer runs as the process the demo started; nothing to stop"
      rm -f "$DEMO_DIR/$1.pid"
    elif [[ $1 != journald ]]; then
      echo "== $3: was not running"
    fi
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $(($2 * 10))); do ours "$1" >/dev/null || break; sleep 0.1; done
  if ours "$1" >/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    echo "== stopped $3 (pid $pid) with SIGKILL: it did not exit within $2 s"
  else
    echo "== stopped $3 (pid $pid)"
  fi
  rm -f "$DEMO_DIR/$1.pid"
}

start() {
  [[ $DEMO_DIR != *[\"\\]* ]] || die "DEMO_DIR must not contain quotes or backslashes"
  mkdir -p "$DEMO_DIR"
  touch "$MARK"

  echo "== harmony-fleet auth init $AUTH (keys made once, kept on every run)"
  "$BIN/harmony-fleet" auth init "$AUTH" | sed 's/^/   /'
  # nats-server reads an include relative to its config's directory.
  cat >"$DEMO_DIR/nats.conf" <<EOF
# The demo's nats-server: devices are decided by the auth callout (harmony-fleet auth serve).
include "auth/nats-auth.conf"
EOF

  local pid
  if pid=$(ours nats-server); then
    echo "== the demo's nats-server already runs (pid $pid, port $NATS_PORT)"
  elif listening; then
    die "port $NATS_PORT is taken by a process this demo did not start; " \
      "choose another: make demo NATS_PORT=14222"
  else
    echo "== starting nats-server -js on 127.0.0.1:$NATS_PORT (store $DEMO_DIR/nats," \
      "config $DEMO_DIR/nats.conf)"
    nohup "$BIN/nats-server" -c "$DEMO_DIR/nats.conf" -js -a 127.0.0.1 -p "$NATS_PORT" \
      -sd "$DEMO_DIR/nats" >"$DEMO_DIR/nats-server.log" 2>&1 &
    record nats-server $!
    for _ in $(seq 150); do listening && break; sleep 0.1; done
    listening || die "nats-server did not start; see $DEMO_DIR/nats-server.log"
  fi

  # Log streaming reads the journal. Use the machine's journald when one runs; only when
  # none does (no systemd as PID 1), start one for the demo, which demo-stop stops again.
  if pid=$(ours journald); then
    echo "== the demo's systemd-journald already runs (pid $pid)"
  elif journald_up; then
    echo "== using the running systemd-journald (not the demo's: demo-stop leaves it alone)"
  elif [[ -x $JOURNALD && $EUID -eq 0 ]]; then
    echo "== no journald runs: starting $JOURNALD for the demo (demo-stop stops it)"
    nohup "$JOURNALD" >/dev/null 2>&1 &
    record journald $!
    for _ in $(seq 50); do journald_up && break; sleep 0.1; done
  else
    echo "== no journald runs and none can be started here: logs will show 'blind'"
  fi

  echo "== harmony-fleet --nkey $AUTH/operator.nk init"
  "${FLEET[@]}" init

  if pid=$(ours authd); then
    echo "== the demo's auth callout already runs (pid $pid)"
  else
    echo "== harmony-fleet auth serve -c $AUTH/authd.toml (log: $DEMO_DIR/authd.log)"
    nohup "$BIN/harmony-fleet" auth serve -c "$AUTH/authd.toml" >"$DEMO_DIR/authd.log" 2>&1 &
    record authd $!
    for _ in $(seq 100); do grep -q auth-serving "$DEMO_DIR/authd.log" && break; sleep 0.1; done
    grep -q auth-serving "$DEMO_DIR/authd.log" ||
      die "the auth callout did not start; see $DEMO_DIR/authd.log"
  fi

  if pid=$(ours agent); then
    echo "== the demo's agent already runs (pid $pid)"
  else
    echo "== an enrollment token that approves at once (shown once; only its hash is kept)"
    local token
    token=$("${FLEET[@]}" enroll token create --auto-approve --expires 1h --note demo 2>/dev/null |
      tail -n 1)
    (umask 077 && printf '%s\n' "$token" >"$DEMO_DIR/enroll-token")
    local id_line="# device_id: unset, so the contents of /etc/machine-id"
    [[ -z ${DEMO_DEVICE_ID:-} ]] || id_line="device_id = \"$DEMO_DEVICE_ID\""
    cat >"$CFG" <<EOF
# The demo's agent config: every key not set here has the default shown in
# agent.example.toml. Everything the agent writes stays under $DEMO_DIR.
[agent]
$id_line
state_dir = "$DEMO_DIR/state"
health_file = "$DEMO_DIR/run/health.json"

[labels]
demo = "true"

[nats]
servers = ["$NATS_URL"]
# No credential here: the agent makes its own key on its first start and logs in with it.

[identity]
enroll_token_file = "$DEMO_DIR/enroll-token"
EOF
    echo "== harmony-agent check-config + run with $CFG (log: $DEMO_DIR/agent.log)"
    "$BIN/harmony-agent" -c "$CFG" check-config
    nohup "$BIN/harmony-agent" -c "$CFG" run >"$DEMO_DIR/agent.log" 2>&1 &
    record agent $!
  fi
  local device
  device=${DEMO_DEVICE_ID:-$(cat /etc/machine-id)}

  echo "== waiting for the device $device to enroll and be Ready"
  local ready=""
  for _ in $(seq 150); do
    if "${FLEET[@]}" devices 2>/dev/null | grep -q "^$device  *Ready "; then
      ready=1
      break
    fi
    ours agent >/dev/null || break
    sleep 0.2
  done
  "${FLEET[@]}" devices
  [[ -n $ready ]] || die "the device did not become Ready; see $DEMO_DIR/agent.log"
  echo
  "${FLEET[@]}" enroll list
  echo
  "$BIN/harmony-agent" -c "$CFG" identity
  echo
  "$BIN/harmony-agent" -c "$CFG" status || true
  cat <<MSG

The agent, the auth callout and nats-server keep running in the background; all
their files are under $DEMO_DIR. Try:
  export NATS_URL=$NATS_URL
  alias fleet='$BIN/harmony-fleet --nkey $AUTH/operator.nk'
  fleet devices --json
  fleet watch
  fleet enroll list; fleet rotate $device; fleet revoke $device
  $BIN/harmony-agent -c $CFG info
  echo hello | systemd-cat -t demo; fleet logs $device -f
  kill -9 \$(cut -d' ' -f1 $DEMO_DIR/agent.pid)
      # then harmony-fleet devices: Stale once the heartbeat is older than 4 x interval
      # (1m at the 15s default), Offline beyond max(5m, 20 x interval) (5m)
Stop it with: make demo-stop  (the agent first, so it records Stopped; then nats-server)
The store survives for the next demo, old devices included; make demo-clean stops
everything and removes $DEMO_DIR.
MSG
}

stop() {
  # The agent first, while NATS is still there: its last heartbeat says `stopping`,
  # which `harmony-fleet devices` shows as Stopped. It exits within 5 s of SIGTERM.
  stop_one agent 15 "the agent"
  stop_one authd 10 "the auth callout"
  stop_one nats-server 10 "nats-server"
  if [[ -f $DEMO_DIR/journald.pid ]]; then
    stop_one journald 10 "the demo's systemd-journald"
  elif journald_up; then
    echo "== systemd-journald: not started by the demo; left running"
  fi
}

clean() {
  stop
  if [[ -f $MARK ]]; then
    rm -rf -- "$DEMO_DIR"
    echo "== removed $DEMO_DIR (the store, state and logs of the demo)"
  elif [[ -e $DEMO_DIR ]]; then
    die "$DEMO_DIR is not a demo directory (no .harmony-demo in it); not removing it"
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  clean) clean ;;
  *) die "usage: scripts/demo.sh [start|stop|clean]" ;;
esac
