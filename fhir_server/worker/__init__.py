"""Background work: the transactional outbox, its relay to Dramatiq, and the workers that run the actors."""
