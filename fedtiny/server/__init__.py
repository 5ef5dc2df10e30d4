"""The server's side: strategies, one per file (:mod:`~fedtiny.server.strategies`), aggregation
as plain functions (:mod:`~fedtiny.server.aggregate`), the recorder of metrics and summary
(:mod:`~fedtiny.server.recorder`), the checks before a run (:mod:`~fedtiny.server.prepare`),
a run on any Flower Grid (:mod:`~fedtiny.server.run`), its round loop
(:mod:`~fedtiny.server.rounds`) and per-round checkpoints (:mod:`~fedtiny.server.checkpoint`).

Layer 7 (server): may import errors, trainer, config, data, models, budgets, client, devices.
"""
