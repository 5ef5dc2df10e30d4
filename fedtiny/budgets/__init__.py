"""Budgets: memory (update schemes under an SRAM budget); privacy and energy follow."""
