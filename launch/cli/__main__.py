"""`python -m testbed.launch.cli ...`: the `testbed` command."""

import sys

from testbed.launch.cli import main

sys.exit(main())
