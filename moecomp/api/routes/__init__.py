"""HTTP routes: each handler validates, calls one service function and returns a schema."""
