"""``python -m fsm_protocol``: the same as the ``fsm-protocol`` command."""

from ._cli._main import main

raise SystemExit(main())
