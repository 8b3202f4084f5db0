"""Example trial set-ups (YAML data)."""
