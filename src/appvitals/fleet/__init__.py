"""Fleet telemetry: wire protocol, agent, spool, collector, warehouse backends, explanation, simulation."""

from __future__ import annotations


def __getattr__(name: str):
    # lazy: importing appvitals.fleet.protocol must not pull in psutil, Starlette or DuckDB
    if name == "Agent":
        from appvitals.fleet.client.agent import Agent

        return Agent
    if name == "run_simulation":
        from appvitals.fleet.sim.simulate import run_simulation

        return run_simulation
    raise AttributeError(name)


__all__ = ["Agent", "run_simulation"]
