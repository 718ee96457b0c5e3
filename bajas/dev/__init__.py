"""`bajas dev`: the whole system on one machine with embedded defaults (never production)."""
