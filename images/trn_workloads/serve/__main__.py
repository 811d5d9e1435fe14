import logging
import sys

import uvicorn

from trn_workloads.serve.app import create_app
from trn_workloads.serve.config import load_config


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # One worker process: the model lives in this process and the batcher needs every request.
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info",
                timeout_graceful_shutdown=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
