"""``python -m fedtiny`` is the ``fedtiny`` command."""

from fedtiny.cli import main

main()
