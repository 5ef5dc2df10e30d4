"""One device's part in a run: the run context (:mod:`~fedtiny.client.context`), the backend
interface (:mod:`~fedtiny.client.backend`), the simulated backend
(:mod:`~fedtiny.client.simulated`), parameters as Flower records (:mod:`~fedtiny.client.records`)
and the round a device plays for each message (:mod:`~fedtiny.client.round`).

Layer 5 (client): may import errors, trainer, config, data, models, budgets. The board backend
lives in ``fedtiny.devices``, above; the engine hands it in.
"""
