"""The Celery worker: the app, the thin job task, the job runner, the reaper."""
