"""``python -m deltasync`` runs the CLI."""

from .cli import main

main()
