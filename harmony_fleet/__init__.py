"""The operator side: `harmony-fleet`. Never installed on a device; uses only `harmony_core`."""
