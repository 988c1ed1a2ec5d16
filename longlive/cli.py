"""Command line: `python -m longlive run | validate | sweep | plugins`.

Exit codes: 0 ok, 2 bad input (ConfigError: one line, no traceback), 1 runtime failure.
This module and longlive/distributed.py are the only places that read environment variables.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from longlive.errors import ConfigError, LongLiveError
from longlive.monitor import PROGRESS_LOGGER

log = logging.getLogger("longlive")

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as our one-line bad-input errors (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="longlive", description="Autoregressive long-video diffusion: run experiments, "
                     "validate them, list plugins.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log DEBUG messages to the console")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="run an experiment (generate, train, bench, ... by its run.task)",
                         description="Run an experiment file. Outputs go to <run.output_dir>/<run.name>/<timestamp>/.")
    run.add_argument("experiment", type=Path, help="the experiment TOML file")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one value (TOML syntax; repeatable), e.g. --set sampler.num_frames=256")
    run.add_argument("--run-dir", type=Path, default=None, help="write outputs here instead of a new timestamped folder")
    run.add_argument("--allow-changed-resume", action="store_true",
                     help="resume a checkpoint although the experiment changed in a way that breaks exact resume "
                          "(both experiments are kept in the run directory)")

    val = sub.add_parser("validate", help="check experiment files without running them",
                         description="Load each experiment, build its plugins and check every table and path.")
    val.add_argument("experiments", type=Path, nargs="+", help="experiment TOML files")
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one value before validating (repeatable)")

    sweep = sub.add_parser("sweep", help="run the variants of a sweep file and tabulate their results",
                           description="Validate every variant of a sweep file, run the unfinished ones (each an "
                           "ordinary run in <sweep dir>/<variant>/seed<N>/) and write results.md, results.csv and a "
                           "TensorBoard hparams view (docs/sweeps.md).")
    sweep.add_argument("sweep", type=Path, help="the sweep TOML file")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one value of every variant (repeatable)")
    sweep.add_argument("--jobs", type=int, default=1, help="runs at a time, each its own process (default 1)")
    sweep.add_argument("--dry-run", action="store_true", help="validate and list the runs, run nothing")
    sweep.add_argument("--sweep-dir", type=Path, default=None, help="instead of <sweep.output_dir>/<sweep.name>")
    sweep.add_argument("--dedicated", action="store_true",
                       help="nothing else runs on this machine: wall times are not marked as shared (needs --jobs 1)")

    sub.add_parser("plugins", help="list installed plugins, their hooks and config keys",
                   description="List every plugin of the longlive.plugins entry-point group.")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _configure_console_logging(logging.DEBUG if args.verbose else
                               logging.INFO if args.command in ("run", "sweep") else logging.WARNING)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "validate":
            return _cmd_validate(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        return _cmd_plugins()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except LongLiveError as e:
        log.debug("failure", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as e:  # a bug or a library failure: the traceback goes to the log file (or -v console)
        log.debug("failure", exc_info=True)
        log_file = _log_file()
        where = f"traceback in {log_file}" if log_file else "rerun with -v for the traceback"
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"error: {type(e).__name__}: {first} ({where})", file=sys.stderr)
        return EXIT_FAILURE


def _cmd_run(args: argparse.Namespace) -> int:
    from longlive.config import load_experiment
    from longlive.run import make_run, run_task

    experiment = load_experiment(args.experiment, args.overrides)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.run_dir is None:
        raise ConfigError("--run-dir: under torchrun every rank must write to one run directory; pass --run-dir DIR")
    run = make_run(experiment, run_dir=args.run_dir)
    run.allow_changed_resume = args.allow_changed_resume
    rank = run.mesh.rank  # under torchrun, one log file per rank; rank 0 writes the outputs and prints
    _add_file_log(run.run_dir / ("log.txt" if rank == 0 else f"log.rank{rank}.txt"))
    log.info("run %s (task %s) -> %s", experiment.run.name, experiment.run.task, run.run_dir)
    result = run_task(run)
    summary = result.get("summary")
    if rank == 0:
        if summary:
            print(summary)
        print(f"outputs: {run.run_dir}")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from longlive.config import load_experiment
    from longlive.run import check_experiment

    for path in args.experiments:
        check_experiment(load_experiment(path, args.overrides))
        print(f"ok: {path}")
    return EXIT_OK


def _cmd_sweep(args: argparse.Namespace) -> int:
    import shlex
    import signal

    from longlive.sweep import run_sweep

    def stop(signum: int, frame: object) -> None:  # `kill` stops the runs it started, as Ctrl-C does
        raise KeyboardInterrupt

    command = " ".join(["python -m longlive sweep", shlex.quote(str(args.sweep)),
                        *(f"--set {shlex.quote(item)}" for item in args.overrides),
                        *(["--dedicated"] if args.dedicated else [])])
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        code, text = run_sweep(args.sweep, overrides=args.overrides, sweep_dir=args.sweep_dir, jobs=args.jobs,
                               dry_run=args.dry_run, shared_machine=not args.dedicated, command=command)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(text, end="")
    return code


def _cmd_plugins() -> int:
    from longlive.registry.manager import (config_defaults, installed_plugins, load_plugin_class, plugin_hooks,
                                           plugin_summary)

    plugins = installed_plugins()
    if not plugins:
        print("no plugins installed")
    for name, info in sorted(plugins.items()):
        try:
            cls = load_plugin_class(name)
        except LongLiveError as e:
            print(f"{name} {info.version} ({info.distribution}): cannot load: {e}\n")
            continue
        print(f"{name} {info.version} ({info.distribution}, {info.target})")
        print(f"  {plugin_summary(cls)}")
        print(f"  hooks: {', '.join(plugin_hooks(cls)) or 'none'}")
        defaults = config_defaults(cls)
        keys = ", ".join(f"{k} = {v!r}" for k, v in defaults.items()) or "none"
        print(f"  [plugins.{name}] keys: {keys}\n")
    return EXIT_OK


def _configure_console_logging(level: int) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for handler in [h for h in root.handlers if h.get_name() in ("longlive-console", "longlive-file")]:
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.set_name("longlive-console")
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(levelname).1s %(name)s: %(message)s"))
    rank = int(os.environ.get("RANK", "0"))  # launchers (torchrun) set RANK
    if rank != 0:
        console.addFilter(lambda record: record.levelno >= logging.WARNING)
    if sys.stderr.isatty():  # a terminal shows tqdm bars; log.txt (and pipes, CI) get the progress lines
        console.addFilter(lambda record: record.name != PROGRESS_LOGGER)
    root.addHandler(console)
    for noisy in ("PIL", "matplotlib", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _log_file() -> str | None:
    """The path of this process's run log, if one is open."""
    for handler in logging.getLogger().handlers:
        if handler.get_name() == "longlive-file" and isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def _add_file_log(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.set_name("longlive-file")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
