"""Real and emulated boards: the serial protocol, the link, the bridge, the board backend of
a device's round (:class:`fedtiny.devices.backend.BoardBackend`), the emulated fleet and the
damaging link proxy.

Layer 6 (devices): may import errors, trainer, config, data, models, budgets, client.
"""
