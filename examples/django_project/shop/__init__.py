"""A minimal Django project whose orders are durable workflows (see settings.py)."""
