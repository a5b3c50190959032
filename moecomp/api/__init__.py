"""The HTTP service: create_app() in app.py, routes in routes/, logic in services/, shapes in schemas.py."""
