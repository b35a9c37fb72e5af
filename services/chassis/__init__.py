"""The chassis: what every Steward service runs on (settings, gRPC server, errors, database, bus, telemetry)."""
