"""The fleet simulator (`make bench-fleet N=10000`): many simulated devices against real NATS.

`device` is one simulated device (the agent's own announce, heartbeat and
log-batch code on its own connection), `worker` a process of many, `servers`
the NATS side (one server or a 3-node cluster, and what it costs), `operator`
the `harmony-fleet` commands timed over the fleet; `__main__` runs it all.
"""
