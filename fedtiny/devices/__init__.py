"""Real and emulated boards: the serial protocol, the link, the bridge, the ClientApp's board
backend, the emulated fleet and the damaging link proxy."""
