"""Real and emulated boards: the serial protocol (and, to come, links, bridge and fleet)."""
