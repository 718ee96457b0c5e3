"""Durable cancellation ("baja") of hosting services on Temporal."""
