"""The explanation: warehouse facts (SQL), the ranking of explanations and the drill-down report."""
