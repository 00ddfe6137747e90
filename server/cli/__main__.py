"""`python -m server.cli` runs the storefront command line."""

import sys

from server.cli import main

sys.exit(main())
