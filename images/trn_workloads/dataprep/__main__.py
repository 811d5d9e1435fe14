import sys

from trn_workloads.dataprep.cli import main

if __name__ == "__main__":
    sys.exit(main())
