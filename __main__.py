"""``python -m optc`` runs the CLI."""

from optc.tools.cli.console import console_main

console_main()
