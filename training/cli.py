"""The `risk` command: one entry point, one subcommand per workload.

Argument errors print one line naming the argument and exit with status 2;
every subcommand takes --quiet, and progress bars appear only on a terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from risk_service.timeutil import parse_date, parse_instant


class UsageError(Exception):
    """A bad argument: the message names it; the exit status is 2."""


def _instant(text: str) -> object:
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _date(text: str) -> object:
    try:
        return parse_date(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage dump buries the message)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="risk", description="Fraud and credit risk scoring.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sim = sub.add_parser("simulate", help="generate a synthetic payment world")
    sim.add_argument("--out", required=True, type=Path, help="directory to write the tables to")
    sim.add_argument("--accounts", type=_positive_int, default=10_000)
    sim.add_argument("--days", type=_positive_int, default=120)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--start", type=_date, default=parse_date("2026-08-01"), help="YYYY-MM-DD")
    sim.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    sim.add_argument("--fraud-rate", type=float, default=None, help="target share of fraud events")
    sim.add_argument("--quiet", action="store_true")
    sim.set_defaults(handler=_cmd_simulate)

    train = sub.add_parser("train", help="train the fraud and credit models into a bundle")
    train.add_argument("--data", type=Path, help="directory with events/accounts/credit tables")
    train.add_argument(
        "--from-log",
        default=None,
        metavar="URL",
        help="train the fraud model from a decision log and its labels "
        "(sqlite:///PATH or postgresql://...)",
    )
    train.add_argument("--models", type=Path, default=Path("models"))
    train.add_argument("--reports", type=Path, default=Path("reports"))
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--train-until", type=_instant, default=None, help="ISO 8601 instant")
    train.add_argument("--credit-data", type=Path, default=None, help="application table")
    train.add_argument("--target", default=None, help="target column of --credit-data")
    train.add_argument("--config", type=Path, default=None, help="costs and budgets (TOML)")
    train.add_argument("--promote", action="store_true", help="make the new versions champion")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(handler=_cmd_train)

    report = sub.add_parser("report", help="rebuild the evaluation report of the champions")
    report.add_argument("--models", type=Path, default=Path("models"))
    report.add_argument("--data", type=Path, required=True)
    report.add_argument("--reports", type=Path, default=Path("reports"))
    report.add_argument("--config", type=Path, default=None)
    report.add_argument("--quiet", action="store_true")
    report.set_defaults(handler=_cmd_report)

    serve = sub.add_parser("serve", help="run the scoring service under gunicorn")
    serve.add_argument("--host", default=os.environ.get("RISK_HOST", "127.0.0.1"))
    serve.add_argument(
        "--port", type=_positive_int, default=int(os.environ.get("RISK_PORT", "8000"))
    )
    serve.add_argument(
        "--workers", type=_positive_int, default=int(os.environ.get("RISK_WORKERS", "1"))
    )
    serve.add_argument(
        "--threads",
        type=_positive_int,
        default=int(os.environ["RISK_THREADS"]) if os.environ.get("RISK_THREADS") else None,
        help="threads per worker (RISK_THREADS); default: 1 with the embedded stores, else 4 "
        "(see default_threads)",
    )
    serve.add_argument(
        "--models", type=Path, default=None, help="models directory (RISK_MODELS_DIR)"
    )
    serve.add_argument("--policy", type=Path, default=None, help="policy file (RISK_POLICY_FILE)")
    serve.add_argument("--accounts", type=Path, default=None, help="accounts table to load")
    serve.add_argument("--quiet", action="store_true")
    serve.set_defaults(handler=_cmd_serve)

    keys = sub.add_parser("keys", help="create API keys for the service")
    keys_sub = keys.add_subparsers(dest="action", required=True, parser_class=_Parser)
    keys_create = keys_sub.add_parser("create", help="a new random key and its keys-file entry")
    keys_create.add_argument("--id", required=True, help="the client's name (A-Z a-z 0-9 . _ -)")
    keys_create.add_argument(
        "--scopes", required=True, help="comma-separated: score, feedback, read, admin"
    )
    keys_create.add_argument("--format", choices=("toml", "json"), default="toml")
    keys_create.add_argument("--quiet", action="store_true", help="print the key and entry only")
    keys_create.set_defaults(handler=_cmd_keys_create)

    models = sub.add_parser("models", help="list, verify, promote, shadow or roll back models")
    models.add_argument(
        "action", choices=("list", "show", "verify", "promote", "rollback", "shadow", "audit")
    )
    models.add_argument("version", nargs="?", help="a version (show, promote, shadow)")
    models.add_argument("--models", type=Path, default=Path("models"))
    models.add_argument("--kind", choices=("fraud", "credit"), default=None)
    models.add_argument("--clear", action="store_true", help="shadow: remove the challenger")
    models.add_argument(
        "--load",
        action="store_true",
        help="verify: also load each version as a worker does (its trees compiled, which "
        "fills numba's on-disk cache: a first `risk serve` then starts in seconds)",
    )
    models.add_argument("--quiet", action="store_true")
    models.set_defaults(handler=_cmd_models)

    policies = sub.add_parser("policies", help="add, list, verify, promote or shadow policies")
    policies.add_argument(
        "action",
        choices=("add", "list", "show", "verify", "promote", "rollback", "shadow", "audit"),
    )
    policies.add_argument("target", nargs="?", help="a policy FILE (add) or a VERSION")
    policies.add_argument("--models", type=Path, default=Path("models"))
    policies.add_argument("--clear", action="store_true", help="shadow: remove the challenger")
    policies.add_argument("--quiet", action="store_true")
    policies.set_defaults(handler=_cmd_policies)

    logs = sub.add_parser("log", help="maintain a decision log: prune old decisions")
    logs_sub = logs.add_subparsers(dest="action", required=True, parser_class=_Parser)
    prune = logs_sub.add_parser(
        "prune", help="delete decisions (and their labels) older than a retention, in batches"
    )
    prune.add_argument(
        "--log", required=True, help="sqlite:///PATH, a SQLite file, or postgresql://HOST/DB"
    )
    prune.add_argument(
        "--older-than-days",
        type=float,
        required=True,
        help="delete decisions appended more than this many days ago (at least 180 unless "
        "--force: labels may still come for younger ones)",
    )
    prune.add_argument("--batch", type=_positive_int, default=500, help="decisions per step")
    prune.add_argument(
        "--pause-ms", type=float, default=20.0, help="pause between steps, for a live service"
    )
    prune.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    prune.add_argument("--force", action="store_true", help="allow a retention under 180 days")
    prune.add_argument("--quiet", action="store_true")
    prune.set_defaults(handler=_cmd_log_prune)

    back = sub.add_parser("backtest", help="decide history with candidate models and policies")
    back.add_argument("--data", type=Path, default=None, help="directory with the event tables")
    back.add_argument("--models", type=Path, default=Path("models"))
    back.add_argument("--out", type=Path, required=True, help="directory for decisions and report")
    back.add_argument(
        "--version", action="append", default=[], help="fraud=V,credit=W (repeat: candidates)"
    )
    back.add_argument("--policy", type=Path, action="append", default=[], help="policy file")
    back.add_argument("--from", dest="start", type=_instant, default=None, help="ISO 8601")
    back.add_argument("--to", dest="end", type=_instant, default=None, help="ISO 8601, exclusive")
    back.add_argument("--credit-data", type=Path, default=None, help="application table")
    back.add_argument("--scheduler", default=None, help="'local' (LocalCluster) or an address")
    back.add_argument("--config", type=Path, default=None, help="costs and capacity (TOML)")
    back.add_argument(
        "--no-reasons", action="store_true", help="skip TreeSHAP reasons (~2 ms per flagged event)"
    )
    back.add_argument("--quiet", action="store_true")
    back.set_defaults(handler=_cmd_backtest)
    return parser


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _cmd_simulate(args: argparse.Namespace) -> int:
    if args.fraud_rate is not None and not 0 < args.fraud_rate <= 0.2:
        raise UsageError(f"--fraud-rate must be in (0, 0.2], got {args.fraud_rate}")
    _check_writable_dir(args.out, "--out")
    from training.simulate import simulate

    try:
        manifest = simulate(
            args.out,
            accounts=args.accounts,
            days=args.days,
            seed=args.seed,
            start=args.start,
            fmt=args.format,
            fraud_rate=args.fraud_rate,
            progress=_show_progress(args),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not args.quiet:
        rows = manifest.get("rows", {})
        print(f"wrote {rows} to {args.out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from training.train import run_training

    if args.from_log is not None:
        return _train_from_log(args)
    if args.data is None and args.credit_data is None:
        raise UsageError("--data is required (or --credit-data with --target)")
    if args.credit_data is not None and args.target is None:
        raise UsageError("--credit-data needs --target COLUMN")
    summary = run_training(
        data_dir=args.data,
        models_dir=args.models,
        reports_dir=args.reports,
        seed=args.seed,
        train_until=args.train_until,
        credit_data=args.credit_data,
        target=args.target,
        config_path=args.config,
        promote=args.promote,
        progress=_show_progress(args),
        log=None if args.quiet else print,
    )
    if not args.quiet:
        for line in summary:
            print(line)
    return 0


def _train_from_log(args: argparse.Namespace) -> int:
    """`risk train --from-log URL`: the fraud model from logged decisions and feedback."""
    from training.from_log import run_training_from_log

    if args.data is not None or args.credit_data is not None:
        raise UsageError("--from-log trains from the log alone: drop --data and --credit-data")
    summary = run_training_from_log(
        url=args.from_log,
        models_dir=args.models,
        reports_dir=args.reports,
        seed=args.seed,
        train_until=args.train_until,
        config_path=args.config,
        promote=args.promote,
        log=None if args.quiet else print,
    )
    if not args.quiet:
        for line in summary:
            print(line)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from training.train import rebuild_report

    for line in rebuild_report(
        models_dir=args.models,
        data_dir=args.data,
        reports_dir=args.reports,
        config_path=args.config,
        progress=_show_progress(args),
    ):
        if not args.quiet:
            print(line)
    return 0


def default_threads(env: Mapping[str, str]) -> int:
    """Threads per worker when neither --threads nor RISK_THREADS says: 1 where a request never
    waits (in-memory state, SQLite log without an fsync per commit), else 4.

    With one thread the worker answers each request in its event loop (`serve_inline` in
    risk_service/worker.py): no hand-off to a pool thread and back, measured at half the CPU
    per /score and 1.8x the requests a second of 4 threads (docs/benchmarks.md). Where requests wait
    on Redis, PostgreSQL or an fsync, threads overlap those waits (and share fsyncs in one
    group commit), so there they stay.
    """
    state = env.get("RISK_STATE_URL", "").strip()
    log_url = env.get("RISK_DECISION_LOG_URL", "").strip().strip('"')
    sync = env.get("RISK_DECISION_LOG_SYNC", "NORMAL").strip().strip('"').upper()
    waits = bool(state) or log_url.startswith("postgres") or sync != "NORMAL"
    return 4 if waits else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    """Verify the models and policy here (a clear error beats a worker boot loop), then exec
    gunicorn."""
    env = dict(os.environ)
    for flag, key in (
        ("models", "RISK_MODELS_DIR"),
        ("policy", "RISK_POLICY_FILE"),
        ("accounts", "RISK_ACCOUNTS_FILE"),
    ):
        value = getattr(args, flag)
        if value is not None:
            env[key] = str(value)
    threads = args.threads if args.threads is not None else default_threads(env)
    if args.workers > 1 and not env.get("RISK_STATE_URL"):
        raise UsageError(
            f"--workers {args.workers}: the in-memory state store keeps velocities per process, "
            "so more than one worker would give wrong answers; use --threads, or configure a "
            "shared store (RISK_STATE_URL=redis://...)"
        )
    from risk_service.verification import load_serving_policy, verify_champions

    # verified as the workers will verify them again, without loading them (LightGBM's import
    # alone takes ~2 s, which every start of the service would wait for twice)
    models_dir = Path(env.get("RISK_MODELS_DIR", "models"))
    verify_champions(models_dir)
    load_serving_policy(env.get("RISK_POLICY_FILE"), models_dir)
    _check_keys_or_loopback(args.host, env)
    # prometheus_client multiprocess mode: each worker writes its metrics to files here
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="risk-metrics-")
        env["RISK_METRICS_DIR_OWNED"] = "1"
    # One OpenMP thread: LightGBM's default thread pool inside web workers collapses throughput.
    env["OMP_NUM_THREADS"] = "1"
    shared = bool(env.get("RISK_STATE_URL"))
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:risk_service.gunicorn_conf",
        "--workers",
        str(args.workers),
        "--threads",
        str(threads),
        "--worker-class",
        "risk_service.worker.BufferingThreadWorker",
        "--bind",
        f"{args.host}:{args.port}",
        # in memory, the stop writes the state for the next start (risk_service/snapshot.py)
        "--graceful-timeout",
        "10" if shared else "30",
        # shared state: one listening socket per worker, the kernel spreads connections over
        # them (otherwise keep-alive connections pile onto whichever worker accepts first). In
        # memory, no: a second `risk serve` on the port must fail to bind, not split the
        # traffic between two states
        *(["--reuse-port"] if shared else []),
        "--log-level",
        "warning" if args.quiet else "info",
        "risk_service:create_app()",
    ]
    if not args.quiet:
        print(f"serving on http://{args.host}:{args.port} (POST /score, GET /docs)", flush=True)
    os.execvpe(sys.executable, command, env)
    return 0  # pragma: no cover - execvpe does not return


def _check_keys_or_loopback(host: str, env: dict[str, str]) -> None:
    """With no API key configured, listen on a loopback address only; load the keys here (a
    clear error beats a worker boot loop)."""
    import json

    from risk_service.auth import KeyConfigError, is_loopback_host, load_keys

    settings: dict[str, object] = {}
    for key in ("API_KEYS", "API_KEYS_FILE"):
        text = env.get("RISK_" + key)
        try:  # as Flask reads RISK_* variables: JSON where it parses
            settings[key] = json.loads(text) if text else None
        except ValueError:
            settings[key] = text
    try:
        ring = load_keys(settings)
    except KeyConfigError as exc:
        raise UsageError(str(exc)) from None
    if len(ring) == 0 and not is_loopback_host(host):
        raise UsageError(
            f"--host {host}: no API keys are configured (RISK_API_KEYS or RISK_API_KEYS_FILE), "
            "so the service listens only on a loopback address (127.0.0.1, ::1, localhost); "
            "make keys with `risk keys create`"
        )


def _cmd_keys_create(args: argparse.Namespace) -> int:
    """Print a new key once, and the keys-file entry (its SHA-256, never the key)."""
    import json

    from risk_service.auth import KeyConfigError, entry_toml, key_entry, new_key

    key = new_key()
    try:
        entry = key_entry(args.id, key, args.scopes.split(","))
    except KeyConfigError as exc:
        raise UsageError(str(exc)) from None
    text = entry_toml(entry) if args.format == "toml" else json.dumps(entry)
    if args.quiet:
        print(key)
        print(text.rstrip("\n"))
        return 0
    print(f"API key for {args.id} (shown once: put it in the client's secret store):")
    print(key)
    print("Add this entry to the keys file (RISK_API_KEYS_FILE); it holds the key's hash only:")
    print(text.rstrip("\n"))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from training.model_admin import run_models_command

    if args.load and args.action != "verify":
        raise UsageError("--load goes with verify: risk models verify --load")
    lines = run_models_command(
        args.action, args.version, args.models, args.kind, clear=args.clear, load=args.load
    )
    for line in lines:
        print(line)
    return 0


def _cmd_policies(args: argparse.Namespace) -> int:
    from training.model_admin import run_policies_command

    for line in run_policies_command(args.action, args.target, args.models, clear=args.clear):
        print(line)
    return 0


def _cmd_log_prune(args: argparse.Namespace) -> int:
    from risk_service.timeutil import iso_ms
    from training.log_prune import prune_log

    result = prune_log(
        args.log,
        older_than_days=args.older_than_days,
        batch=args.batch,
        pause_s=args.pause_ms / 1000.0,
        dry_run=args.dry_run,
        force=args.force,
    )
    verb = "would delete" if result.dry_run else "deleted"
    oldest = "none" if result.oldest_kept_ms is None else iso_ms(result.oldest_kept_ms)
    print(
        f"{result.source}: {verb} {result.decisions:,} decisions and {result.labels:,} labels "
        f"appended before {iso_ms(result.cutoff_ms)}; {result.kept:,} decisions kept, the "
        f"oldest appended {oldest} ({result.seconds:.1f} s)"
    )
    return 0


def _cmd_backtest(args: argparse.Namespace) -> int:
    _check_writable_dir(args.out, "--out")
    if args.data is None:
        if args.credit_data is None:
            raise UsageError("--data is required (or --credit-data FILE)")
        from training.backtest import parse_versions
        from training.backtest_credit import run_credit_table

        chosen = parse_versions(args.version)
        if len(chosen) > 1 or "fraud" in chosen[0] or args.policy:
            raise UsageError("--credit-data alone takes one --version credit=V and no --policy")
        summary = run_credit_table(
            credit_data=args.credit_data,
            models_dir=args.models,
            out_dir=args.out,
            version=chosen[0].get("credit"),
        )
        if not args.quiet:
            print(
                f"{summary['applications']} applications: {args.out / 'credit_decisions.parquet'}"
            )
        return 0
    from training.backtest import run_backtest

    run = run_backtest(
        data_dir=args.data,
        models_dir=args.models,
        out_dir=args.out,
        versions=args.version,
        policies=args.policy,
        start=args.start,
        end=args.end,
        scheduler=args.scheduler,
        config_path=args.config,
        reasons=not args.no_reasons,
        progress=_show_progress(args),
        log=None if args.quiet else print,
    )
    if args.credit_data is not None:
        from training.backtest_credit import run_credit_table

        run_credit_table(
            credit_data=args.credit_data,
            models_dir=args.models,
            out_dir=args.out / "credit-data",
            version=None,
        )
    if not args.quiet:
        for c in run.candidates:
            rates = ", ".join(
                f"{name} {float((run.decisions[c.name] == i).mean()):.2%}"
                for i, name in enumerate(("approve", "challenge", "review", "decline"))
            )
            print(f"{c.name} {c.describe()}: {rates}")
        print(f"wrote {args.out / 'decisions.parquet'}, summary.json, report.html")
    return 0


def _check_writable_dir(path: Path, flag: str) -> None:
    import os

    target = path
    while not target.exists():
        if target.parent == target:
            break
        target = target.parent
    if target.exists() and not target.is_dir():
        raise UsageError(f"{flag} {path}: {target} is not a directory")
    if not os.access(target, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable")


def main(argv: Sequence[str] | None = None) -> int:
    from risk_service.bundles import BundleError
    from risk_service.policy import PolicyError
    from training.datasets import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UsageError as exc:
        print(f"risk {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (DataError, BundleError, PolicyError) as exc:
        print(f"risk {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
