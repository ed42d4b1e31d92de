"""FHIR operations ($name), one module each, registered with the OperationDefinition they implement."""
