"""Fleet telemetry: wire protocol, agent, spool, collector, warehouse backends, explanation, simulation."""
