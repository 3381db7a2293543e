"""`spotlight cluster keys`: write the cluster's CURVE key file (mode 0600).

    spotlight cluster keys --out cluster.key
    # copy cluster.key to every node like any other secret (mode 0600), then on each:
    export SPOTLIGHT_CLUSTER_KEY_FILE=/path/to/cluster.key

Every runtime that binds or dials beyond loopback then encrypts and authenticates its
connections with this key (``spotlight/runtime/security.py``). Without a key file the
key is derived from ``$SPOTLIGHT_CLUSTER_TOKEN``, which is only as strong as the token.
The secret is never printed; the fingerprint (not secret) tells two files apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spotlight.runtime.keys import KEY_FILE_ENV, KeyFileError, generate_key, write_key_file

__all__ = ["add_keys_parser", "run_keys"]


def add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kp = sub.add_parser(
        "keys",
        help="write a new cluster CURVE key file (mode 0600)",
        description=__doc__.split("\n\n")[0],
    )
    kp.add_argument("--out", type=Path, required=True, help="key file to write (mode 0600)")
    kp.add_argument("--force", action="store_true", help="replace an existing key file")


def run_keys(args: argparse.Namespace) -> int:
    key = generate_key()
    try:
        path = write_key_file(args.out, key, force=args.force)
    except (KeyFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (mode 0600, fingerprint {key.fingerprint})")
    print(f"distribute it like the cluster token; on every node: export {KEY_FILE_ENV}={path}")
    return 0
