"""``embedding-pipeline sample-data`` (also ``python -m embedding_pipeline.cli.sample``): the sample
data generator's command line over :func:`embedding_pipeline.sample.generate.run_options`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.sample.generate import GenerateOptions, date_range, parse_date, run_options
from embedding_pipeline.sample.layout import DEFAULT_ROW_GROUP_SIZE, LANGS, TABLES


def _arg_date(text: str) -> date:
    try:
        return parse_date(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _arg_int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _arg_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of the generator, for this module's ``main`` and for a subcommand of the package CLI
    (which then calls ``run(args)``: cross-argument errors are reported through the same parser)."""
    parser.add_argument("--out", type=Path, required=True, help="output root (tables are folders under it)")
    parser.add_argument(
        "--keywords", type=_arg_int(0), default=1000, help="keyword rows in total (default 1000)"
    )
    parser.add_argument(
        "--products", type=_arg_int(0), default=1000, help="product rows in total (default 1000)"
    )
    parser.add_argument(
        "--tables", nargs="+", choices=TABLES, default=list(TABLES), help="tables to generate"
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--dates", nargs="+", type=_arg_date, help="partition dates, YYYY-MM-DD")
    when.add_argument("--start-date", type=_arg_date, help="first partition date (with --days)")
    parser.add_argument(
        "--days", type=_arg_int(1), default=None, help="number of daily partitions from --start-date"
    )
    parser.add_argument("--lang", choices=LANGS, default="ja", help="vocabulary language (default ja)")
    parser.add_argument("--seed", type=int, default=42, help="same seed + arguments -> identical files")
    parser.add_argument(
        "--bad-rate", type=_arg_rate, default=0.0, help="share of rows with an injected defect"
    )
    parser.add_argument(
        "--bad-files", action="store_true", help="add zero-row, wrong-schema and non-Parquet files"
    )
    parser.add_argument("--row-group-size", type=_arg_int(1), default=DEFAULT_ROW_GROUP_SIZE)
    parser.add_argument("--rows-per-file", type=_arg_int(1), default=None, help="split partitions into files")
    parser.set_defaults(func=run, sample_data_parser=parser)
    return parser


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    if args.days is not None and args.start_date is None:
        raise ConfigError("--days needs --start-date")
    if args.start_date is not None:
        dates = date_range(args.start_date, args.days or 1)
    else:
        dates = tuple(args.dates or (date(2024, 1, 1),))
    return GenerateOptions(
        out_root=args.out,
        keywords=args.keywords,
        products=args.products,
        dates=dates,
        lang=args.lang,
        seed=args.seed,
        bad_rate=args.bad_rate,
        bad_files=args.bad_files,
        row_group_size=args.row_group_size,
        rows_per_file=args.rows_per_file,
        tables=tuple(dict.fromkeys(args.tables)),
    )


def format_summary(summary: dict[str, Any]) -> str:
    return (
        f"{summary['table']}: {summary['rows']} rows in {len(summary['partitions'])} partitions, "
        f"{summary['files']} files, {summary['row_groups']} row groups, "
        f"{summary['injected']} injected bad rows "
        f"({summary['expected_dead_letters']} to dead-letter), {summary['bad_files']} bad files "
        f"-> {summary['path']} ({summary['seconds']:.1f} s)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except ConfigError as exc:
        args.sample_data_parser.error(str(exc))
    result = run_options(options)
    for summary in result["tables"].values():
        print(format_summary(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m embedding_pipeline.cli.sample",
        description="Generate deterministic keyword/product sample data as dt-partitioned Parquet.",
    )
    return add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
