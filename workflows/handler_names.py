"""The names of the workflow's signals, updates and queries: the workflow registers its
handlers under them and `starter/client.py` calls them by them."""

from __future__ import annotations

# signals
CONFIRM = "confirm"
WITHDRAW = "withdraw"
RETRY = "retry"
# updates
CONFIRM_CODE = "confirm_code"
RESEND_CODE = "resend_code"
WITHDRAW_CANCELLATION = "withdraw_cancellation"
REQUEST_ARCHIVE = "request_archive"
WAIT_FOR_CODE = "wait_for_code"
# queries
STATUS = "status"
ARCHIVE_LINK = "archive_link"
