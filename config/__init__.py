"""Configuration: config/local.toml (the development defaults) and its loader, settings.py.

The lowest layer of the project: everything else imports :mod:`config.settings`; it imports
nothing of the project.
"""
