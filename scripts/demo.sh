#!/usr/bin/env bash
# `make demo`: a local JetStream nats-server, the fleet layout, the agent with
# agent.example.toml, and the device shown Ready by `harmony-fleet devices`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DEMO_DIR=${DEMO_DIR:-/tmp/harmony-demo}
mkdir -p "$DEMO_DIR"
export NATS_URL=nats://127.0.0.1:4222

if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  echo "== starting nats-server -js on 127.0.0.1:4222 (store $DEMO_DIR/nats)"
  nohup "$BIN/nats-server" -js -a 127.0.0.1 -p 4222 -sd "$DEMO_DIR/nats" \
    >"$DEMO_DIR/nats-server.log" 2>&1 &
  echo $! >"$DEMO_DIR/nats-server.pid"
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.1; done
else
  echo "== a server already listens on 127.0.0.1:4222; using it"
fi

# Log streaming reads the journal: on a machine without systemd as PID 1, run journald alone.
if ! systemd-cat true 2>/dev/null && [[ -x /lib/systemd/systemd-journald ]]; then
  echo "== starting systemd-journald (no systemd here) so the agent has a journal to ship"
  nohup /lib/systemd/systemd-journald >/dev/null 2>&1 &
  echo $! >"$DEMO_DIR/journald.pid"
  for _ in $(seq 50); do systemd-cat true 2>/dev/null && break; sleep 0.1; done
fi

echo "== harmony-fleet init"
"$BIN/harmony-fleet" init

if [[ -f "$DEMO_DIR/agent.pid" ]] && kill -0 "$(cat "$DEMO_DIR/agent.pid")" 2>/dev/null; then
  echo "== the demo agent already runs (pid $(cat "$DEMO_DIR/agent.pid"))"
else
  echo "== harmony-agent check-config + run with agent.example.toml (log: $DEMO_DIR/agent.log)"
  "$BIN/harmony-agent" -c agent.example.toml check-config
  nohup "$BIN/harmony-agent" -c agent.example.toml run >"$DEMO_DIR/agent.log" 2>&1 &
  echo $! >"$DEMO_DIR/agent.pid"
fi

echo "== waiting for the device to be Ready"
for _ in $(seq 150); do
  if "$BIN/harmony-fleet" devices 2>/dev/null | grep -q " Ready "; then break; fi
  sleep 0.2
done
"$BIN/harmony-fleet" devices
echo
"$BIN/harmony-agent" -c agent.example.toml status || true
cat <<MSG

The agent and nats-server keep running in the background. Try:
  $BIN/harmony-fleet devices --json
  $BIN/harmony-fleet watch
  $BIN/harmony-agent -c agent.example.toml info
  echo hello | systemd-cat -t demo; $BIN/harmony-fleet logs \$(cat /etc/machine-id) -f
  kill -9 \$(cat $DEMO_DIR/agent.pid)   # then harmony-fleet devices: Stale, later Offline
Stop everything with: make demo-stop
MSG
