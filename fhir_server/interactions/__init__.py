"""FHIR RESTful interactions, one module each: a handler from a parsed request to an outcome."""
