"""Arrow schemas of every stage's manifest, id rules and schema checks."""
