"""Placeholder until this command lands; registers nothing yet."""
