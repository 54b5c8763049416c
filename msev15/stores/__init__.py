"""State: sessions, orders, outbox and audit, each query scoped to its tenant."""
