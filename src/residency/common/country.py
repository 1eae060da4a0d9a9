"""Country codes: ISO 3166-1 alpha-2, checked against the standard's list, not just its shape.

Every party names its country (a job's ``[[nodes]]``, a node's ``node.toml``, an admission), and
auditors read budgets by it; ``XX`` or ``UK`` would be a country nobody can look up. The list is
``pycountry``'s copy of ISO 3166-1.
"""

from __future__ import annotations

from typing import Annotated

import pycountry
from pydantic import AfterValidator, Field


def iso_country(code: str) -> str:
    """``code`` if it is an assigned ISO 3166-1 alpha-2 code; ``ValueError`` says the fix."""
    if pycountry.countries.get(alpha_2=code) is None:
        raise ValueError(
            f"{code!r} is not an ISO 3166-1 alpha-2 country code; fix: use the two-letter "
            "code, e.g. DE for Germany, GB for the United Kingdom"
        )
    return code


CountryCode = Annotated[
    str,
    Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 code"),
    AfterValidator(iso_country),
]
"""A country field of a job, a node's settings or an admission."""
