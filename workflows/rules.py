"""The provider's deadlines (contract section 1), as pure functions.

No Temporal import: the workflow calls these with `workflow.now()`, the panel calls
them with the wall clock for the preview, and the tests call them directly.
"""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from bajas.models import BillingOutcome, PaymentMethod


@lru_cache(maxsize=8)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_date(instant: datetime, tz_name: str) -> date:
    """The provider's calendar date at an aware instant."""
    if instant.tzinfo is None:
        raise ValueError("instant must be timezone-aware")
    return instant.astimezone(zone(tz_name)).date()


def debit_cutoff(expires_on: date) -> date:
    """The 1st of the expiry month: from then on the debit is already at the bank."""
    return expires_on.replace(day=1)


def billing_outcome(
    confirmed_on: date, expires_on: date, payment_method: PaymentMethod | str
) -> BillingOutcome:
    """The contract's table: the first condition that holds wins."""
    auto_debit = PaymentMethod(payment_method) is PaymentMethod.AUTO_DEBIT
    if confirmed_on >= expires_on:
        return BillingOutcome.LATE_NO_REFUND
    if auto_debit and confirmed_on >= debit_cutoff(expires_on):
        return BillingOutcome.DEBIT_PROCESSED_NO_REFUND
    if auto_debit:
        return BillingOutcome.DEBIT_CANCELLED
    return BillingOutcome.NO_FURTHER_CHARGES


def outcome_at(
    instant: datetime, tz_name: str, expires_on: date, payment_method: PaymentMethod | str
) -> BillingOutcome:
    return billing_outcome(local_date(instant, tz_name), expires_on, payment_method)


def revokes_mandate(outcome: BillingOutcome) -> bool:
    return outcome is not BillingOutcome.NO_FURTHER_CHARGES


def voids_renewal_invoices(outcome: BillingOutcome) -> bool:
    """Only a confirmation in time cancels what would be charged for the next period."""
    return outcome in (BillingOutcome.DEBIT_CANCELLED, BillingOutcome.NO_FURTHER_CHARGES)


OUTCOME_TEXT_ES: dict[BillingOutcome, str] = {
    BillingOutcome.LATE_NO_REFUND: (
        "El servicio ya venció: se desactiva la renovación automática, se revoca el "
        "débito automático si lo hubiera y las facturas de renovación quedan como están "
        "(no hay reintegro)."
    ),
    BillingOutcome.DEBIT_PROCESSED_NO_REFUND: (
        "El débito automático de la renovación ya está en el banco: se procesa y no se "
        "reintegra. Se revoca el débito automático para los meses siguientes."
    ),
    BillingOutcome.DEBIT_CANCELLED: (
        "Se revoca el débito automático y se anulan las facturas de renovación "
        "pendientes: no habrá más cargos."
    ),
    BillingOutcome.NO_FURTHER_CHARGES: (
        "Se desactiva la renovación automática y se anulan las facturas de renovación "
        "pendientes: no habrá más cargos."
    ),
}

MONTHS_ES = (
    "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre"
).split()


def debit_warning_es(expires_on: date, payment_method: PaymentMethod | str) -> str | None:
    """The automatic-debit warning of the customer instructions, or None for manual payers."""
    if PaymentMethod(payment_method) is not PaymentMethod.AUTO_DEBIT:
        return None
    cutoff = debit_cutoff(expires_on)
    return (
        f"Usted paga por débito automático: confirme la baja antes del 1 de "
        f"{MONTHS_ES[cutoff.month - 1]} de {cutoff.year}. Desde ese día el débito ya está "
        f"en el banco, se procesa y no se reintegra."
    )
