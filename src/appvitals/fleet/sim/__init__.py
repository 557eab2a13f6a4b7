"""The fleet simulator: scenarios (TOML) and the simulated clients that run the real agent code."""
