"""The tools around the platform and workload programs: render, validate, preflight, sweep, cost."""
