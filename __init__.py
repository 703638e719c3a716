"""optc."""
