"""`spotlight config show|schema|docs`: the configuration tree, resolved and documented.

``show`` resolves a configuration exactly as `spotlight run` would (defaults < ``--config
FILE|PRESET`` < ``--set``) and prints it as a config file with each key's doc, type and
default as comments; what it prints loads back to the same tree, so it is also the way to
start a file of one's own. ``schema`` writes a JSON Schema for editors; ``docs`` writes
docs/configuration.md (``--check`` compares instead, for CI).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spotlight.config import ConfigError, load_config
from spotlight.config.describe import describe, type_text
from spotlight.config.presets import preset_names
from spotlight.config.reference import commented_yaml, markdown_reference
from spotlight.config.schema import json_schema

__all__ = ["add_arguments", "run"]

DOCS_PAGE = Path("docs/configuration.md")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = f"presets (--config NAME): {', '.join(preset_names())}"
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser(
        "show",
        help="print the resolved configuration: every key with its doc, type and default",
        description="Resolve a configuration as `spotlight run` would and print it as a "
        "config file (it loads back to the same tree).",
    )
    show.add_argument("--config", metavar="FILE|PRESET", help="a config file or a preset name")
    show.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable; applied last)",
    )
    show.add_argument(
        "--json",
        action="store_true",
        help="one JSON object: key -> {value, default, type, doc}",
    )
    schema = sub.add_parser("schema", help="write a JSON Schema of config files, for editors")
    schema.add_argument("--output", "-o", metavar="FILE", help="write here (default: stdout)")
    docs = sub.add_parser("docs", help="write the configuration reference page (Markdown)")
    docs.add_argument("--output", "-o", metavar="FILE", help="write here (default: stdout)")
    docs.add_argument(
        "--check",
        metavar="FILE",
        help=f"exit 1 if FILE (e.g. {DOCS_PAGE}) differs from what the code generates",
    )


def _show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, overrides=args.overrides)
    if args.json:
        out = {
            row.key: {
                "value": row.value,
                "default": row.default,
                "type": type_text(row.type),
                "doc": row.doc,
            }
            for row in describe(cfg)
        }
        print(json.dumps(out, indent=2))
        return 0
    sources = ["defaults"]
    if args.config:
        sources.append(f"--config {args.config}")
    sources += [f"--set {item}" for item in args.overrides]
    header = (
        "spotlight run configuration, resolved from: " + " < ".join(sources) + "\n"
        "Load it back with --config FILE; each key: its doc, then type and default.\n"
        f"{sum(row.changed for row in describe(cfg))} of {len(describe(cfg))} keys differ "
        "from the defaults (marked 'changed')."
    )
    sys.stdout.write(commented_yaml(cfg, header=header))
    return 0


def _write(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        Path(output).write_text(text)
        print(f"wrote {output}", file=sys.stderr)


def _docs(args: argparse.Namespace) -> int:
    page = markdown_reference()
    if args.check is not None:
        path = Path(args.check)
        if not path.is_file() or path.read_text() != page:
            print(
                f"spotlight config docs: {path} is not what the code generates; regenerate it "
                f"with `spotlight config docs --output {path}`",
                file=sys.stderr,
            )
            return 1
        return 0
    _write(page, args.output)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "show":
            return _show(args)
        if args.action == "schema":
            _write(json.dumps(json_schema(), indent=2) + "\n", args.output)
            return 0
        return _docs(args)
    except ConfigError as exc:
        print(f"spotlight config: {exc}", file=sys.stderr)
        return 2
