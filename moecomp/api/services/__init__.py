"""Service functions: the queries, commits and checks behind the routes (routes stay thin)."""
