"""`python -m leaf` is the `leaf` command."""

from leaf.cli import main

raise SystemExit(main())
