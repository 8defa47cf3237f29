import sys

from hallufix.cli import main

sys.exit(main())
