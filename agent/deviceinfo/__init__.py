"""What this device is, and its publication to KV `device-info/<device_id>`.

- `collect`: the DeviceInfo of now (os-release, /proc, psutil, config labels);
- `announce`: the `Announcer` service that publishes it, guarding the key against duplicates;
- `identity`: the machine id and the effective device id;
- `arch`: Debian's name for this CPU;
- `bootid`: this boot's id and start.
"""

from agent.deviceinfo.announce import Announcer
from agent.deviceinfo.arch import debian_arch
from agent.deviceinfo.bootid import boot_time, read_boot_id
from agent.deviceinfo.collect import collect_device_info, same_device_info
from agent.deviceinfo.identity import device_id_of, read_machine_id

__all__ = [
    "Announcer",
    "boot_time",
    "collect_device_info",
    "debian_arch",
    "device_id_of",
    "read_boot_id",
    "read_machine_id",
    "same_device_info",
]
