import sys

from jiomosa.cli import main

sys.exit(main())
