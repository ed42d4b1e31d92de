from fhir_server.search.parameters import load_search_parameters, parameters_for, search_parameters


def test_registry_is_loaded_once():
    assert search_parameters() is search_parameters()


def test_parameters_for_a_type_include_the_common_ones():
    patient = parameters_for("Patient")
    for code in ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "family", "birthdate"):
        assert code in patient
    assert patient["birthdate"].type == "date"
    assert patient["birthdate"].expression == "Patient.birthDate"
    assert patient["_id"].evaluate is None and patient["_lastUpdated"].evaluate is None


def test_shared_definitions_keep_only_the_part_for_the_type():
    # clinical-patient covers many types in one union; each type evaluates only its own alternative.
    assert parameters_for("Observation")["patient"].expression == "Observation.subject.where(resolve() is Patient)"
    assert parameters_for("Task")["patient"].expression == "Task.for.where(resolve() is Patient)"


def test_resolve_stand_in_checks_the_reference_type():
    patient = parameters_for("Communication")["patient"]
    communication = {"resourceType": "Communication", "subject": {"reference": "Patient/p1"}}
    assert patient.evaluate(communication) == [{"reference": "Patient/p1"}]
    communication["subject"] = {"reference": "Group/g1"}
    assert patient.evaluate(communication) == []
    communication["subject"] = {"reference": "http://elsewhere.org/fhir/Patient/p2"}
    assert patient.evaluate(communication) == [{"reference": "http://elsewhere.org/fhir/Patient/p2"}]


def test_choice_types_read_the_typed_element():
    value = parameters_for("Observation")["value-quantity"]
    observation = {"resourceType": "Observation", "valueQuantity": {"value": 5.4, "unit": "mg"}}
    assert [q["unit"] for q in value.evaluate(observation)] == ["mg"]


def test_composites_are_offered_with_their_components_and_special_parameters_are_not():
    composite = parameters_for("Observation")["code-value-quantity"]
    assert composite.type == "composite"
    assert [component.type for component in composite.components] == ["token", "quantity"]
    assert "near" not in parameters_for("Location")


def test_unknown_types_get_the_common_parameters():
    assert set(parameters_for(None)) == {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"}
    assert parameters_for("NoSuchType") == parameters_for(None)


def test_every_expression_compiles():
    registry = load_search_parameters()
    assert len(registry.by_type) > 130
    assert sum(1 for params in registry.by_type.values() for p in params.values() if p.evaluate) > 2000
