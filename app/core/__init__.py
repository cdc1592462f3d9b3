"""The core both sides stand on: spec, job states, catalog, domain errors.

Imports no web framework, no SQL and no ML framework.
"""
