import sys

from robustsweep.cli import main

sys.exit(main())
