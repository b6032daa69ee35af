"""The operator side: `harmony-fleet`. Uses only contracts, NATS options and the bus."""
