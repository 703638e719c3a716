"""``python -m optc`` runs the CLI."""

from optc.tools.cli import main

raise SystemExit(main())
