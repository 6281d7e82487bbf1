import sys

from zoology.cli import main

sys.exit(main())
