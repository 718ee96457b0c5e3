"""One router per file: the HTTP API (`api_*`), the customer panel (`panel_*`) and the dev mail viewer."""
