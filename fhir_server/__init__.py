"""FHIR R4 interoperability server on PostgreSQL."""

__version__ = "0.1.0"
FHIR_VERSION = "4.0.1"
