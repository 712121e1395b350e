"""User-facing jobs (few-shot, reasoning, batch), settings, the Celery app and the CLI."""
