"""The ledger: journal entries with balanced lines, exact money, imports and reversals."""
