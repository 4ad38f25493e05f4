"""``python -m node`` is ``ptth``."""

from node._cli import main

main()
