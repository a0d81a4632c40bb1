"""CSV layouts of the accounting packages ledgerflow exports to (filled in by the export)."""

from __future__ import annotations

PROFILES: dict[str, object] = {"generic": None, "yayoi": None, "moneyforward": None, "freee": None}
