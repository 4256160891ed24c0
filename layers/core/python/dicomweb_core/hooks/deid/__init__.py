"""De-identification per PS3.15 Annex E (the research store)."""
