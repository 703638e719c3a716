"""``python -m optc`` runs the CLI."""

from optc.tools.console import console_main

console_main()
