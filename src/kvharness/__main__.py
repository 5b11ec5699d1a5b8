import sys

from kvharness.cli import main

sys.exit(main())
