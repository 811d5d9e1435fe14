import sys

from trnctl.cli import main

sys.exit(main())
