import sys

from chat4all_workers.cli import main

sys.exit(main())
