"""`python -m imagen_worker` is the `imagen` command."""

from .cli import main

main()
