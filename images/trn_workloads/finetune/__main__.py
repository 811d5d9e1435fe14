import sys

from trn_workloads.finetune.cli import main

if __name__ == "__main__":
    sys.exit(main())
