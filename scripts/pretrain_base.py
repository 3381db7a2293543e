"""Pretrain the tiny base model (same as `spotlight pretrain`; see spotlight/models/base.py)."""

from __future__ import annotations

import argparse
import sys

from spotlight.commands import pretrain


def main() -> int:
    parser = argparse.ArgumentParser(prog="pretrain_base.py", description=__doc__)
    pretrain.add_arguments(parser)
    return pretrain.run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
