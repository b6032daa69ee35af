"""`python -m agent.logs -c agent.toml`: only the log shipper, for tests and the benchmark.

With `--until-idle` it exits once it has read to the end of the journal and
every batch is acknowledged and its cursor saved, printing the summary as JSON
plus `shipping_s`: seconds from the reader being positioned to that moment.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import signal
import sys
from pathlib import Path

from agent.config import load_config
from agent.logs.service import LogsService
from harmony_core.bus import Bus
from harmony_core.contracts import dump_json

__all__ = ["main"]


class _Done(Exception):
    pass


async def _until_idle(svc: LogsService, settle: float, times: dict[str, float]) -> None:
    idle_since: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(0.01)
        pump, sh = svc._pump, svc._shipper
        if "positioned" not in times and pump is not None and pump.positioned:
            times["positioned"] = loop.time()
        idle = (
            pump is not None
            and sh is not None
            and pump.at_tail
            and sh.backlog == 0
            and not pump.builder.records
            and svc.store.written == svc.committed
        )
        if not idle:
            idle_since = None
        elif idle_since is None:
            idle_since = loop.time()
        elif loop.time() - idle_since >= settle:
            times["caught_up"] = idle_since
            return


async def _main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    # Given, not derived from /etc/machine-id: the log shipper knows nothing of device info.
    device_id = args.device_id or cfg.agent.device_id
    if not device_id:
        sys.stderr.write("python -m agent.logs: set [agent] device_id or pass --device-id\n")
        return 2
    bus = Bus(cfg.nats, name=f"harmony-agent-logs {device_id}")
    svc = LogsService(cfg, device_id, bus)
    stop = asyncio.Event()
    times: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def _stopper() -> None:
        if args.until_idle:
            waiter = asyncio.ensure_future(stop.wait())
            idle = asyncio.ensure_future(_until_idle(svc, args.settle, times))
            await asyncio.wait([waiter, idle], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            idle.cancel()
        else:
            await stop.wait()
        raise _Done

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(bus.run())
            tg.create_task(svc.run(lambda: None))
            tg.create_task(_stopper())
    except* _Done:
        pass
    await bus.close()
    out = json.loads(dump_json(svc.summary()))
    if "positioned" in times and "caught_up" in times:
        # From the reader being positioned to everything acked and saved (no startup).
        out["shipping_s"] = round(times["caught_up"] - times["positioned"], 3)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.logs", description=__doc__)
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("--device-id", help="default: [agent] device_id of the config")
    p.add_argument("--until-idle", action="store_true", help="exit once caught up and saved")
    p.add_argument("--settle", type=float, default=0.3, help="seconds idle before exiting")
    args = p.parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` dumps every thread's stack
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
