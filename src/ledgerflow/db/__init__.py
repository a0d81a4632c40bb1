"""Storage: schema (SQLAlchemy Core), engines, per-backend SQL and Alembic migrations."""
