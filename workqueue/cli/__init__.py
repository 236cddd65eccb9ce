"""The command-line interfaces behind the thin entry points at the top of the repository."""
