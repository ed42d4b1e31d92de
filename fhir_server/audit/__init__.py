"""The audit trail: an AuditEvent for every interaction, and Provenance for writes made on someone's behalf."""
