"""The canonical tables: the one data contract of simulation, training, backtests and `/score`.

Every column is declared once here, with its type, whether it is required, and
what it means. `docs/data.md` is generated from these declarations
(`python -m risk_service.schema > docs/data.md`), so the documentation cannot
drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENT_TYPES: tuple[str, ...] = ("payment", "transfer", "withdrawal", "top_up", "bill_pay")
CHANNELS: tuple[str, ...] = ("app", "qr", "nfc", "web")
FUNDING_SOURCES: tuple[str, ...] = ("balance", "debit_card", "credit_card", "credit_line")
AUTH_METHODS: tuple[str, ...] = ("password", "fingerprint", "face", "sms_otp", "none")
MERCHANT_CATEGORIES: tuple[str, ...] = (
    "grocery",
    "restaurant",
    "transport",
    "utilities",
    "fashion",
    "electronics",
    "digital_goods",
    "gaming",
    "travel",
    "health",
    "entertainment",
    "luxury",
)
FRAUD_SCENARIOS: tuple[str, ...] = (
    "account_takeover",
    "stolen_card",
    "card_testing",
    "compromised_merchant",
    "promotion_abuse",
    "credit_cash_out",
    "mule",
)
KYC_LEVELS: tuple[int, ...] = (0, 1, 2, 3)

# Physical types. "timestamp" is a UTC instant (Parquet: timestamp[us, tz=UTC];
# CSV: ISO 8601 with a Z suffix). "string" columns are stored as Arrow strings.
DTYPES = ("string", "timestamp", "int8", "int32", "int64", "float64")


@dataclass(frozen=True)
class Column:
    """One column of a canonical table."""

    name: str
    dtype: str
    required: bool
    doc: str
    allowed: tuple[str, ...] | tuple[int, ...] | None = None
    label: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"column {self.name}: dtype {self.dtype!r} not in {DTYPES}")


EVENT_COLUMNS: tuple[Column, ...] = (
    Column("event_id", "string", True, "Unique identifier of the event."),
    Column("timestamp", "timestamp", True, "When the event happened (UTC)."),
    Column("account_id", "string", True, "The paying (acting) account."),
    Column("event_type", "string", True, "What the account did.", EVENT_TYPES),
    Column("amount", "float64", True, "Amount in major units, > 0, two decimals."),
    Column("currency", "string", False, "ISO 4217 code, for example CNY."),
    Column("channel", "string", False, "Where the event was initiated.", CHANNELS),
    Column("merchant_id", "string", False, "The merchant, or its terminal (payments, bill_pay)."),
    Column("merchant_category", "string", False, "The merchant's category.", MERCHANT_CATEGORIES),
    Column("payee_account_id", "string", False, "The receiving account of a transfer."),
    Column(
        "instrument_id", "string", False, "Token of the funding instrument; never a card number."
    ),
    Column("funding_source", "string", False, "Kind of funding instrument.", FUNDING_SOURCES),
    Column("device_id", "string", False, "Device the event came from."),
    Column("ip_address", "string", False, "IP address the event came from."),
    Column("latitude", "float64", False, "Location of the event, degrees."),
    Column("longitude", "float64", False, "Location of the event, degrees."),
    Column("auth_method", "string", False, "How the account authenticated.", AUTH_METHODS),
    Column("is_fraud", "int8", False, "1 if the event was fraud, 0 if not (label).", None, True),
    Column(
        "label_time",
        "timestamp",
        False,
        "When the label became known: for fraud, when it was reported; for a good event, "
        "the end of the chargeback window. Missing: timestamp plus a configurable delay.",
        None,
        True,
    ),
    Column(
        "fraud_scenario",
        "string",
        False,
        "Simulator only: which scenario produced a fraud event (empty for good events).",
        FRAUD_SCENARIOS,
        True,
    ),
)

ACCOUNT_COLUMNS: tuple[Column, ...] = (
    Column("account_id", "string", True, "The account."),
    Column("created_at", "timestamp", True, "When the account was opened (UTC)."),
    Column(
        "kyc_level",
        "int8",
        False,
        "0 none, 1 phone verified, 2 real-name verified, 3 bank-card verified.",
        KYC_LEVELS,
    ),
    Column("age", "int32", False, "Age of the account holder in years."),
    Column("monthly_income", "float64", False, "Declared monthly income in major units."),
    Column("home_latitude", "float64", False, "Home location, degrees."),
    Column("home_longitude", "float64", False, "Home location, degrees."),
    Column("credit_limit", "float64", False, "Pay-later credit line in major units, 0 if none."),
)

CREDIT_COLUMNS: tuple[Column, ...] = (
    Column("application_id", "string", True, "Unique identifier of the credit decision point."),
    Column("account_id", "string", True, "The applying account."),
    Column("timestamp", "timestamp", True, "When the application or limit review happened (UTC)."),
    Column("requested_limit", "float64", True, "Credit line asked for, major units."),
    Column(
        "application_type",
        "string",
        False,
        "application (a new pay-later line) or limit_review.",
        ("application", "limit_review"),
    ),
    Column(
        "defaulted",
        "int8",
        False,
        "1 if the account defaulted within the 90-day performance window (label).",
        None,
        True,
    ),
    Column(
        "label_time",
        "timestamp",
        False,
        "When the outcome became known: the end of the performance window.",
        None,
        True,
    ),
)

TABLES: dict[str, tuple[Column, ...]] = {
    "events": EVENT_COLUMNS,
    "accounts": ACCOUNT_COLUMNS,
    "credit": CREDIT_COLUMNS,
}

LABEL_COLUMNS: frozenset[str] = frozenset(c.name for c in EVENT_COLUMNS if c.label)
CREDIT_LABEL_COLUMNS: frozenset[str] = frozenset(c.name for c in CREDIT_COLUMNS if c.label)


def columns(table: str) -> tuple[Column, ...]:
    """The declared columns of `table` (events, accounts or credit)."""
    try:
        return TABLES[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}; expected one of {sorted(TABLES)}") from None


def required_columns(table: str) -> list[str]:
    return [c.name for c in columns(table) if c.required]


def column_names(table: str) -> list[str]:
    return [c.name for c in columns(table)]


def render_markdown() -> str:
    """The column-by-column reference of every table, as Markdown."""
    out: list[str] = []
    for table, cols in TABLES.items():
        out.append(f"### `{table}`\n")
        out.append("| column | type | required | meaning |")
        out.append("|---|---|---|---|")
        for c in cols:
            meaning = c.doc
            if c.allowed is not None:
                meaning += " One of: " + ", ".join(f"`{v}`" for v in c.allowed) + "."
            if c.label:
                meaning += " *Label column.*"
            out.append(f"| `{c.name}` | {c.dtype} | {'yes' if c.required else 'no'} | {meaning} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(render_markdown())
