import sys

from trn_workloads.compile.cli import main

if __name__ == "__main__":
    sys.exit(main())
