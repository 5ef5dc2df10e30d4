"""How a federation runs: the Flower apps every engine runs (:mod:`~fedtiny.engine.apps`), the
simulation of one experiment (:mod:`~fedtiny.engine.simulation`), the in-process engine
(:mod:`~fedtiny.engine.inprocess`), the watchdog that stops Ray's processes after a SIGKILL
(:mod:`~fedtiny.engine.reaper`) and the local SuperLink that ``flwr run .`` starts
(:mod:`~fedtiny.engine.flower_local`).

Layer 8 (engine): may import every layer below it (errors … server).
"""
