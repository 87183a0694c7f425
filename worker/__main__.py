"""``python -m worker``: run one worker process (what ``switchboard worker`` runs too)."""

from __future__ import annotations

import argparse
import logging

from engine.settings import get_settings
from worker.process import run_worker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description="Execute workflow steps from RQ.")
    parser.add_argument("--burst", action="store_true", help="quit once the queue is empty")
    parser.add_argument("--name", help="a worker name unique among live workers")
    args = parser.parse_args(argv)
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_worker(settings, burst=args.burst, name=args.name)


if __name__ == "__main__":
    main()
