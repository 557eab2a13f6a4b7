"""In-app stats: instruments, the registry, snapshots, persistence, Prometheus text and the in-app server.

Imported by `appvitals` (the public names live there); the store, the server and the
terminal view load their optional dependencies only when used.
"""
