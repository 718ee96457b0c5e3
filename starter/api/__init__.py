"""The HTTP API (`/api`), the customer panel (`/panel/`) and the dev mail viewer (`/dev/mail`)."""
