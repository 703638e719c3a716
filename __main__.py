"""``python -m optc`` runs the CLI."""

from optc.tools.common import console_main

console_main()
