"""The Patient/$match configuration, in one place: deterministic rules, field weights, grade thresholds, nicknames.

Scoring follows Fellegi-Sunter: each compared field adds the log2 likelihood ratio of its agreement level
(how much likelier that level is among true duplicates than among different people) and a field missing
on either side adds nothing. The sum plus PRIOR (the log2 odds that two blocked candidates are the same
person before anything is compared) becomes the score by the logistic function: 1 / (1 + 2^-(sum + PRIOR)),
so 0.5 means "as likely the same person as not".

Grades (the match-grade extension):
- certain: a deterministic rule holds (score 1.0):
  1. the same identifier (system and value, the server's MRN included), or
  2. the same normalized family and given name and birth date, and the same phone, email or address.
- probable: score >= THRESHOLDS["probable"];
- possible: score >= THRESHOLDS["possible"]; lower scores are not returned;
- certainly-not: the two carry different values of one identifier system (other than the MRN system,
  whose values the server assigns per record, and ignoring identifiers marked `old`): different people
  however alike they look. Returned last, with score 0, when they would otherwise have been possible.
CAPS lower the grade where fields that are not independent would otherwise add up: twins share family
name, birth date, address and phone, and differ only in given name.
"""

PRIOR = -8.0

# Blocking (identity/blocking.py) leaves out the namesakes whose birth date disagrees, unless they share an
# identifier, phone or email: so `birthDate.disagree` must keep any agreement of names, gender and address
# below `possible` (a test in tests/operations/test_patient_match.py checks it).

# Field → agreement level → log2 likelihood ratio. `disagree` applies when both sides have the field
# and no better level holds.
WEIGHTS: dict[str, dict[str, float]] = {
    "family": {"exact": 4.5, "phonetic": 3.2, "fuzzy": 2.6, "disagree": -3.0},
    "given": {"exact": 4.0, "nickname": 3.6, "phonetic": 2.8, "fuzzy": 2.4, "initial": 1.0, "disagree": -3.5},
    # Family and given names written the wrong way round: counted once for both fields.
    "name": {"swapped": 6.5},
    "birthDate": {"exact": 5.5, "transposed": 2.8, "year-off-by-one": 2.2, "one-digit": 2.0, "disagree": -5.0},
    "gender": {"exact": 0.5, "disagree": -3.0},
    "phone": {"exact": 4.0, "disagree": -0.5},
    "email": {"exact": 5.0, "disagree": -0.5},
    "address": {"exact": 3.0, "postalCode": 1.5, "disagree": -0.5},
}

THRESHOLDS = {"probable": 0.8, "possible": 0.45}

# (field, level) → the best grade a candidate can get when that field is at that level.
CAPS: dict[tuple[str, str], str] = {("given", "disagree"): "possible"}

# How near two names must be for the `fuzzy` level: Jaro-Winkler similarity, or an edit distance of one
# (a transposition counts as one edit) for names of at least FUZZY_MIN_LENGTH letters.
FUZZY_JARO_WINKLER = 0.9
FUZZY_MIN_LENGTH = 4

# Candidates per blocking query: a common surname or birth date must not crowd out the other blocks.
BLOCK_LIMIT = 100

# Given names that stand for one another (lower case, no accents). Each group is one person's name forms.
NICKNAMES: tuple[tuple[str, ...], ...] = (
    ("william", "bill", "billy", "will", "willy", "liam"),
    ("robert", "bob", "bobby", "rob", "robbie", "bert"),
    ("richard", "rick", "ricky", "dick", "rich", "richie"),
    ("james", "jim", "jimmy", "jamie"),
    ("john", "jack", "johnny", "jon"),
    ("jonathan", "jon", "jonny", "nathan"),
    ("joseph", "joe", "joey", "jose"),
    ("michael", "mike", "mikey", "mick", "mickey"),
    ("thomas", "tom", "tommy"),
    ("charles", "charlie", "chuck", "chas"),
    ("christopher", "chris", "kit", "topher"),
    ("daniel", "dan", "danny"),
    ("david", "dave", "davey"),
    ("edward", "ed", "eddie", "ted", "ned"),
    ("francis", "frank", "fran"),
    ("frederick", "fred", "freddie"),
    ("henry", "hank", "harry"),
    ("lawrence", "larry", "laurie"),
    ("matthew", "matt", "matty"),
    ("nicholas", "nick", "nicky", "klaus"),
    ("patrick", "pat", "paddy"),
    ("peter", "pete"),
    ("samuel", "sam", "sammy"),
    ("stephen", "steven", "steve", "stevie"),
    ("anthony", "tony"),
    ("andrew", "andy", "drew"),
    ("alexander", "alex", "alec", "sandy", "sasha"),
    ("benjamin", "ben", "benny", "benji"),
    ("gregory", "greg"),
    ("timothy", "tim", "timmy"),
    ("kenneth", "ken", "kenny"),
    ("ronald", "ron", "ronnie"),
    ("donald", "don", "donnie"),
    ("raymond", "ray"),
    ("gerald", "jerry", "gerry"),
    ("elizabeth", "liz", "beth", "betty", "eliza", "lisa", "libby", "bess", "elsie"),
    ("margaret", "maggie", "meg", "peggy", "marge", "margie", "greta", "rita"),
    ("catherine", "katherine", "kathryn", "kate", "katie", "kathy", "cathy", "kay", "kitty"),
    ("jennifer", "jen", "jenny"),
    ("patricia", "pat", "patty", "trish", "tricia"),
    ("susan", "sue", "susie", "suzanne"),
    ("deborah", "debra", "deb", "debbie"),
    ("rebecca", "becky", "becca"),
    ("victoria", "vicky", "tori"),
    ("christine", "christina", "chris", "tina", "chrissy"),
    ("barbara", "barb", "barbie"),
    ("dorothy", "dot", "dottie", "dolly"),
    ("abigail", "abby", "gail"),
    ("alexandra", "alex", "sandra", "sandy", "sasha"),
    ("samantha", "sam", "sammy"),
    ("jessica", "jess", "jessie"),
    ("josephine", "jo", "josie"),
    ("joanna", "joanne", "jo"),
    ("theresa", "teresa", "terry", "tess", "tessa"),
    ("virginia", "ginny", "ginger"),
    ("frances", "fran", "frannie"),
    ("helen", "ellen", "nell", "nellie"),
    ("mary", "molly", "polly", "mae", "maria", "marie"),
    ("ann", "anne", "anna", "annie", "nancy", "hannah"),
    ("caroline", "carol", "carrie", "lina"),
    ("johanna", "hanna", "jo"),
    ("wilhelm", "willi", "wim"),
    ("guillermo", "memo", "william"),
    ("francisco", "paco", "pancho", "frank"),
    ("jose", "pepe"),
)
