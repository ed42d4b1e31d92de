"""`_include`, `_revinclude` (with `:iterate`, `*` and typed targets) and `_has` follow canonical references
(`url` and `url|version`) as well as literal ones, set-based; under patient/ scopes included resources are
limited to the compartment as literal includes are."""

import httpx
import psycopg
import pytest

from tests.auth.test_enforcement import bearer, patient_token, smart, system_token  # noqa: F401 (fixture)
from tests.search.helpers import follow, link, match_ids, run
from tests.search.test_include import included_ids
from tests.search.test_query_plans import run_recorded, scans_without_index

FORMS = "http://example.org/fhir/Questionnaire/"
DEFINITIONS = "http://example.org/fhir/"


def response(fhir_id: str, questionnaire: str, status: str = "completed") -> dict:
    return {"resourceType": "QuestionnaireResponse", "id": fhir_id, "status": status, "questionnaire": questionnaire}


@pytest.fixture
def forms(store):
    """Two versions of the intake form, one follow-up form, the responses naming them in every way, a plan
    whose action is an ActivityDefinition and a care plan that instantiates the plan."""
    store({"resourceType": "Questionnaire", "id": "intake-1", "url": FORMS + "intake", "version": "1",
           "status": "active"},
          {"resourceType": "Questionnaire", "id": "intake-2", "url": FORMS + "intake", "version": "2",
           "status": "active"},
          {"resourceType": "Questionnaire", "id": "followup", "url": FORMS + "followup", "version": "1",
           "status": "active"},
          # A Device's `url` is its network address, not a canonical: nothing names it by canonical URL.
          {"resourceType": "Device", "id": "tablet", "url": FORMS + "intake"},
          response("any-intake", FORMS + "intake"),
          response("intake-v1", FORMS + "intake|1", "in-progress"),
          response("intake-v3", FORMS + "intake|3"),  # a version the server does not hold
          response("followup-v1", FORMS + "followup|1", "amended"),
          response("elsewhere", "http://elsewhere.org/Questionnaire/intake"),
          {"resourceType": "Task", "id": "fill-in", "status": "requested", "intent": "order",
           "focus": {"reference": "Questionnaire/followup"}},
          {"resourceType": "ActivityDefinition", "id": "draw-blood", "url": DEFINITIONS + "ActivityDefinition/blood",
           "version": "2024", "status": "active"},
          {"resourceType": "PlanDefinition", "id": "checkup", "url": DEFINITIONS + "PlanDefinition/checkup",
           "version": "1", "status": "active",
           "action": [{"definitionCanonical": DEFINITIONS + "ActivityDefinition/blood|2024"}]},
          {"resourceType": "CarePlan", "id": "plan", "status": "active", "intent": "plan",
           "subject": {"reference": "Patient/p"}, "instantiatesCanonical": [DEFINITIONS + "PlanDefinition/checkup"]})


async def test_include_follows_canonical_references(aconn, forms):
    cases = {
        "any-intake": ["Questionnaire/intake-1", "Questionnaire/intake-2"],  # no version: every version held
        "intake-v1": ["Questionnaire/intake-1"],
        "intake-v3": [],
        "followup-v1": ["Questionnaire/followup"],
        "elsewhere": [],
    }
    for fhir_id, expected in cases.items():
        for value in ("QuestionnaireResponse:questionnaire", "QuestionnaireResponse:questionnaire:Questionnaire",
                      "QuestionnaireResponse:*", "*"):
            found = await run(aconn, "QuestionnaireResponse", f"_id={fhir_id}&_include={value}")
            assert match_ids(found) == [fhir_id]
            assert included_ids(found) == expected, (fhir_id, value)
    found = await run(aconn, "QuestionnaireResponse", "_include=QuestionnaireResponse:questionnaire&_total=accurate")
    assert found["total"] == 5
    assert included_ids(found) == ["Questionnaire/followup", "Questionnaire/intake-1", "Questionnaire/intake-2"]


async def test_revinclude_follows_canonical_references(aconn, forms):
    found = await run(aconn, "Questionnaire", "_id=intake-1&_revinclude=QuestionnaireResponse:questionnaire")
    assert included_ids(found) == ["QuestionnaireResponse/any-intake", "QuestionnaireResponse/intake-v1"]
    found = await run(aconn, "Questionnaire", "_id=intake-2&_revinclude=QuestionnaireResponse:questionnaire")
    assert included_ids(found) == ["QuestionnaireResponse/any-intake"]
    # Literal and canonical references together, each referrer once.
    found = await run(aconn, "Questionnaire", "_id=followup,intake-2&_revinclude=*")
    assert included_ids(found) == ["QuestionnaireResponse/any-intake", "QuestionnaireResponse/followup-v1",
                                   "Task/fill-in"]
    found = await run(aconn, "Questionnaire", "_id=followup&_revinclude=Task:focus&_revinclude=QuestionnaireResponse:"
                                              "questionnaire:Questionnaire")
    assert included_ids(found) == ["QuestionnaireResponse/followup-v1", "Task/fill-in"]
    found = await run(aconn, "Device", "_revinclude=*")
    assert match_ids(found) == ["tablet"] and included_ids(found) == []


async def test_iterate_follows_canonical_references(aconn, forms):
    found = await run(aconn, "CarePlan", "_include=CarePlan:instantiates-canonical"
                                         "&_include:iterate=PlanDefinition:definition")
    assert included_ids(found) == ["ActivityDefinition/draw-blood", "PlanDefinition/checkup"]
    plain = await run(aconn, "CarePlan", "_include=CarePlan:instantiates-canonical"
                                         "&_include=PlanDefinition:definition")
    assert included_ids(plain) == ["PlanDefinition/checkup"]
    found = await run(aconn, "ActivityDefinition", "_revinclude:iterate=PlanDefinition:definition"
                                                   "&_revinclude:iterate=CarePlan:instantiates-canonical")
    assert included_ids(found) == ["CarePlan/plan", "PlanDefinition/checkup"]
    typed = await run(aconn, "CarePlan", "_include=CarePlan:instantiates-canonical:Questionnaire")
    assert included_ids(typed) == []


async def test_has_follows_canonical_references(aconn, forms):
    cases = {
        "_has:QuestionnaireResponse:questionnaire:status=completed": ["intake-1", "intake-2"],
        "_has:QuestionnaireResponse:questionnaire:status=in-progress": ["intake-1"],
        "_has:QuestionnaireResponse:questionnaire:status=amended": ["followup"],
        "_has:QuestionnaireResponse:questionnaire:status=stopped": [],
        "_has:Task:focus:status=requested": ["followup"],  # a literal reference, on the same path
        "_has:QuestionnaireResponse:questionnaire:_id=intake-v1,fill-in": ["intake-1"],
        "_has:QuestionnaireResponse:questionnaire:status=amended&_has:Task:focus:status=requested": ["followup"],
        "_has:QuestionnaireResponse:questionnaire:status=amended&_has:Task:focus:status=draft": [],
    }
    for query, expected in cases.items():
        assert sorted(match_ids(await run(aconn, "Questionnaire", f"{query}&_count=50"))) == expected, query
    nested = "_has:PlanDefinition:definition:_has:CarePlan:instantiates-canonical:status=active"
    assert match_ids(await run(aconn, "ActivityDefinition", nested)) == ["draw-blood"]
    everywhere = await run(aconn, None, "_has:QuestionnaireResponse:questionnaire:status=in-progress")
    assert match_ids(everywhere) == ["intake-1"]


async def test_has_pages_skip_nothing_past_a_deleted_target(aconn, forms, store, db):
    # Tasks name all three forms literally; the first form is then deleted as the delete statement leaves it.
    store(*({"resourceType": "Task", "id": f"fill-{form}", "status": "requested", "intent": "order",
             "focus": {"reference": f"Questionnaire/{form}"}} for form in ("intake-1", "intake-2")))
    db.execute("UPDATE resource SET deleted = true, content = NULL WHERE fhir_id = 'intake-1'")
    found = await run(aconn, "Questionnaire", "_has:Task:focus:status=requested&_count=1")
    seen = match_ids(found)
    while (following := link(found, "next")) is not None:
        found = await follow(aconn, following)
        seen += match_ids(found)
    assert sorted(seen) == ["followup", "intake-2"]


@pytest.mark.parametrize("query", [
    "/QuestionnaireResponse?_id=any-intake&_include=QuestionnaireResponse:questionnaire",
    "/QuestionnaireResponse?_id=any-intake&_include=*",
    "/Questionnaire?_id=intake-1&_revinclude=QuestionnaireResponse:questionnaire",
    "/Questionnaire?_id=intake-1&_revinclude=*",
    "/Questionnaire?_has:QuestionnaireResponse:questionnaire:status=in-progress",
    "/QuestionnaireResponse?questionnaire.version=1",
])
async def test_canonical_lookups_read_no_table_whole(aconn, db, forms, query):
    db.execute("ANALYZE")
    bundle, statements = await run_recorded(aconn, query)
    assert bundle.get("entry"), "the search must find something, so that every statement it can run is checked"
    assert await scans_without_index(aconn, statements) == []


async def test_canonical_includes_keep_to_the_patient_compartment(smart: httpx.AsyncClient,
                                                                  aconn: psycopg.AsyncConnection) -> None:
    writer = bearer(await system_token(aconn, smart, "system/*.cruds"))
    patients = [(await smart.post("/Patient", json={"resourceType": "Patient"}, headers=writer)).json()["id"]
                for _ in range(2)]
    form = {"resourceType": "Questionnaire", "url": FORMS + "consent", "version": "1", "status": "active"}
    assert (await smart.post("/Questionnaire", json=form, headers=writer)).status_code == 201
    answers = [(await smart.post("/QuestionnaireResponse", headers=writer, json={
        "resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": FORMS + "consent|1",
        "subject": {"reference": f"Patient/{patient}"}})).json()["id"] for patient in patients]
    query = {"_include": "QuestionnaireResponse:questionnaire",
             "_revinclude:iterate": "QuestionnaireResponse:questionnaire"}

    def entries(bundle: httpx.Response) -> list[tuple[str, str]]:
        assert bundle.status_code == 200, bundle.text
        return sorted((entry["search"]["mode"], entry["resource"]["resourceType"])
                      for entry in bundle.json().get("entry", []) if entry["search"]["mode"] != "outcome")

    everything = await smart.get("/QuestionnaireResponse", params={**query, "_id": answers[0]}, headers=writer)
    assert entries(everything) == [("include", "Questionnaire"), ("include", "QuestionnaireResponse"),
                                   ("match", "QuestionnaireResponse")]
    # The form is in no patient compartment, nor is the other patient's answer found through it.
    mine = bearer(await patient_token(aconn, smart, patients[0], "patient/*.rs"))
    own = await smart.get("/QuestionnaireResponse", params=query, headers=mine)
    assert entries(own) == [("match", "QuestionnaireResponse")]
    assert own.json()["entry"][0]["resource"]["id"] == answers[0]
