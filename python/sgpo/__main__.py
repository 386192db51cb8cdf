import sys

from sgpo.cli import main

sys.exit(main())
