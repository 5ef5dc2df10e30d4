"""Budgets: memory (update schemes under an SRAM budget, exact arena bytes), privacy (noise,
sampling and the accountant's epsilon), energy (board profiles, a round's millijoules).

Layer 4 (budgets): may import errors, trainer, config, data, models.
"""
