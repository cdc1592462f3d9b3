"""Trainery workers: the Celery app, the supervisor task and the training runners."""
