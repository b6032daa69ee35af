"""Rollouts: a version to many devices in waves, with a bake time and an automatic halt.

`plan` (waves, budget) and `state` (how a rollout moves) are pure; `store` keeps
rollouts in KV `agent-rollouts` with compare-and-set only; `create` checks and
plans one; `view` watches what the devices report; `controller` drives a rollout
(`rollout run`); `commands` is the CLI, `render` what it prints. Nothing is
exported here: `harmony_fleet.cli` loads `commands`, `watch` reads `state`.
"""
