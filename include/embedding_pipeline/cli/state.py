"""``state``: what the ledger holds, importing an old Parquet state, releasing a dead run's lease.

embedding-pipeline state list               every generation's state: live ids, model, lease
embedding-pipeline state migrate [--from D]  import the Parquet state of earlier releases (also
                                             automatic on first use; files renamed *.migrated)
embedding-pipeline state release KEY         give up the lease a dead run holds on generation KEY

The database is ``EMBEDDING_STATE_DB`` (a SQLAlchemy URL), else SQLite under the work directory;
in Airflow the ``embedding_state`` Connection (pipeline_hooks.state_hook).
"""

from __future__ import annotations

import argparse
import json

from embedding_pipeline.runs.state_db import StateSettings


def _list(args: argparse.Namespace) -> int:
    from embedding_pipeline.runs.state import change_logs, known_states
    from embedding_pipeline.runs.state_migrate import migrate_once

    settings = StateSettings.from_env()
    migrate_once(settings)
    states, logs = known_states(settings), change_logs(settings)
    if args.json:
        print(json.dumps({"states": states, "change_logs": logs}, indent=2))
        return 0
    print(settings.describe())
    for state in states:
        lease = f", held by {state['lease']}" if state["lease"] else ""
        print(f"  {state['key']}: {state['live']} live ids, {state['model'] or 'no commit yet'}{lease}")
    for name, latest in logs.items():
        print(f"  change log {name}: {latest} entries")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from embedding_pipeline.runs.state_migrate import legacy_root, migrate_parquet_state
    from embedding_pipeline.runs.storage import as_path

    root = as_path(args.source) if args.source else legacy_root()
    if not root.exists():
        print(f"{root}: no such state root: nothing to import")
        return 1
    counts = migrate_parquet_state(StateSettings.from_env(), root)
    print(f"{root}: imported {counts['states']} states ({counts['rows']} rows) and {counts['logs']} "
          f"change logs ({counts['log_entries']} entries)")  # fmt: skip
    return 0


def _release(args: argparse.Namespace) -> int:
    from embedding_pipeline.runs.state import IndexState

    released = IndexState(StateSettings.from_env(), args.key).release()
    print(f"{args.key}: {'lease released' if released else 'no lease was held'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    state = subparsers.add_parser("state", help="the incremental state: list, migrate, release a lease")
    commands = state.add_subparsers(dest="state_command", required=True)
    p = commands.add_parser("list", help="every generation's state and change log")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)
    p = commands.add_parser("migrate", help="import the Parquet state of earlier releases")
    p.add_argument("--from", dest="source", default=None, help="the old state root (default: where it was)")
    p.set_defaults(func=_migrate)
    p = commands.add_parser("release", help="release the lease a dead run holds on a generation")
    p.add_argument("key", help="the generation's key, as `state list` and the refusal print it")
    p.set_defaults(func=_release)
