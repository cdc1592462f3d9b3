"""Pydantic schemas, apart from the ORM models."""
