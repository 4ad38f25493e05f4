"""``python -m simulations``: see :mod:`simulations._cli`."""

from simulations._cli import main

raise SystemExit(main())
