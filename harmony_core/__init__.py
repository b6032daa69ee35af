"""What the device agent and the operator side (`harmony-fleet`) share, importing neither.

The wire models (`contracts`), the errors, the NATS settings and the bus, label
syntax and selectors, envelope verification, durations and journal names.
"""
