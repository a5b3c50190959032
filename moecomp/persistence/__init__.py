"""The one home of the database: tables and sessions, imported by both the API and the worker."""
