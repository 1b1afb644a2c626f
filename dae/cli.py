"""`dae`: run the pipeline, run one stage, prepare offline data.

Every failure the user can fix ends as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_BUSY = 75  # EX_TEMPFAIL: the root is in use; a Job must not retry it at once


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dae", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--root", default="./dae-root", help="pipeline root (default ./dae-root)")
        sp.add_argument("--quiet", action="store_true", help="only the summary, no progress")
        sp.add_argument(
            "--verbose",
            action="store_true",
            help="also TensorFlow's native log lines and known warnings",
        )
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. noise.stddev=0.3 (repeatable)",
        )

    run = sub.add_parser("run", help="run the whole pipeline")
    run.add_argument("--config", help="YAML config file (default: built-in defaults)")
    run.add_argument("--profile", default="default", help="named profile: default, smoke")
    run.add_argument("--no-cache", action="store_true", help="run every stage (cache=false)")
    common(run)

    runs = sub.add_parser("runs", help="run history from the metadata store; end a run")
    runs.add_argument(
        "action",
        choices=["list", "show", "finish", "fail"],
        help="finish: write a run's metrics once every stage succeeded; fail: "
        "record it failed (what an orchestrator's last steps do)",
    )
    runs.add_argument("run_id", nargs="?", help="for show, finish and fail")
    runs.add_argument("--root", default="./dae-root")
    runs.add_argument("--reason", default="", help="fail: why (e.g. the workflow's status)")
    runs.add_argument("--failures", help="fail: the failed steps, as Argo's workflow.failures")
    lineage = sub.add_parser("lineage", help="what produced a served version")
    lineage.add_argument("name", help="model name, e.g. denoiser")
    lineage.add_argument("version", type=int)
    lineage.add_argument("--root", default="./dae-root")
    lineage.add_argument("--json", action="store_true", help="print JSON")

    stage = sub.add_parser("stage", help="run one stage on an existing run's inputs")
    stage.add_argument("name", help="the stage, as `dae run` names it (e.g. train)")
    stage.add_argument("--run", required=True, dest="run_id", help="the run to work in")
    stage.add_argument(
        "--cache", action="store_true", help="skip the stage on a cache hit, as `dae run` does"
    )
    stage.add_argument(
        "--cache-only",
        action="store_true",
        help="take a cache hit if there is one, else run nothing",
    )
    stage.add_argument(
        "--result", metavar="FILE", help="write how the stage ended to FILE: ran, cached or missed"
    )
    stage.add_argument(
        "--create",
        action="store_true",
        help="first start the run, as `dae run` would, from --config, "
        "--profile and --set (again: nothing to do)",
    )
    stage.add_argument("--config", help="with --create: YAML config file")
    stage.add_argument("--profile", help="with --create: named profile (default: default)")
    common(stage)

    argo = sub.add_parser("argo", help="the pipeline as Argo Workflows manifests")
    argo.add_argument("action", choices=["compile"])
    argo.add_argument("--config", help="YAML config file (default: built-in defaults)")
    argo.add_argument("--profile", default="default", help="named profile: default, smoke")
    argo.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable)",
    )
    argo.add_argument(
        "--layout",
        help="YAML: each stage's Pod size, scale-out and the schedule "
        "(e.g. k8s/components/argo/layout.yaml)",
    )
    argo.add_argument("--output", "-o", help="write the manifests here (default: stdout)")

    from dae.serving.model_server.flags import add_arguments

    add_arguments(sub.add_parser("serve", help="serve pushed versions over TF Serving's API"))
    from dae.serving.batch import denoise as batch

    batch.add_arguments(
        sub.add_parser("denoise", help="denoise a batch of images", description=batch.__doc__)
    )

    from dae.serving import explorer

    explorer.add_arguments(
        sub.add_parser(
            "explore", help="a web page to play with a served model", description=explorer.__doc__
        )
    )

    data = sub.add_parser("data", help="prepare offline datasets (see `dae data prepare -h`)")
    data.add_argument("action", choices=["prepare"])
    data.add_argument("args", nargs=argparse.REMAINDER, help="NAME... [--data-dir D]")
    return p


def _summary(metrics: dict, root: Path, model_name: str) -> str:
    lines = [f"run {metrics['run_id']}: {metrics['status']}"]
    if metrics.get("pushed_version") is not None:
        path = root / "serving" / model_name / str(metrics["pushed_version"])
        lines.append(f"pushed: version {metrics['pushed_version']} at {path}")
    else:
        lines.append(f"not pushed: {metrics.get('blessing_reason') or 'run did not finish'}")
    if metrics.get("psnr_denoised") is not None:
        lines.append(
            f"PSNR: noisy {metrics['psnr_noisy']:.2f} dB -> denoised "
            f"{metrics['psnr_denoised']:.2f} dB; SSIM {metrics['ssim_noisy']:.3f} -> "
            f"{metrics['ssim_denoised']:.3f}"
        )
    cached = set(metrics.get("cached_stages", []))
    times = ", ".join(
        f"{k} {v:.1f}s" + (" (cached)" if k in cached else "")
        for k, v in metrics["stage_seconds"].items()
    )
    lines.append(f"stage times: {times} (total {sum(metrics['stage_seconds'].values()):.1f}s)")
    lines.append(f"metrics: {root / 'runs' / metrics['run_id'] / 'metrics.json'}")
    for page in sorted((root / "runs" / metrics["run_id"]).glob("*/index.html")):
        lines.append(f"report: {page}")
    return "\n".join(lines)


def _dispatch(args) -> int:
    from dae.component import StageError

    if args.command in ("run", "stage"):
        return _pipeline(args)
    if args.command == "runs" and args.action in ("finish", "fail"):
        return _lifecycle(args)
    if args.command in ("runs", "lineage"):
        return _history(args)
    if args.command == "argo":
        return _argo(args)
    if args.command == "serve":
        from dae.serving.model_server import flags, server

        try:
            return server.main(args)
        except flags.ServeError as e:
            raise StageError(str(e)) from None
    if args.command == "denoise":
        from dae.serving.batch import denoise as batch

        try:
            return batch.main(args)
        except batch.BatchError as e:
            raise StageError(str(e)) from None
    if args.command == "explore":
        from dae.serving import explorer

        try:
            return explorer.main(args)
        except explorer.ExploreError as e:
            raise StageError(str(e)) from None
    from dae.pipeline import prepare_data

    return prepare_data.main(args.args)


def _pipeline(args) -> int:
    """`dae run` and `dae stage`: the only commands that load the stages (and TensorFlow)."""
    from dae.pipeline import runner
    from dae.pipeline.config import load_config
    from dae.pipeline.console import Console

    runner.console = Console.for_terminal(args.quiet, _TERMINAL)
    root = Path(args.root).expanduser()
    if args.command == "run":
        config = load_config(args.config, args.profile, args.overrides)
        metrics = runner.run_pipeline(config, root, use_cache=False if args.no_cache else None)
        print(_summary(metrics, root, config.push.model_name))
        return 0
    return _stage(args, root)


def _stage(args, root: Path) -> int:
    """`dae stage`: one stage of a run (created first with --create), or its cache hit."""
    from dae.pipeline import runner
    from dae.pipeline.config import ConfigError, apply_overrides, load_config

    overrides = args.overrides
    if args.create:
        created = load_config(args.config, args.profile or "default", overrides)
        runner.create_run(created, root, args.run_id)
        overrides = []  # they are the run's config now
    elif args.config or args.profile:
        raise ConfigError("--config and --profile of `dae stage` go with --create")
    config = apply_overrides(runner.load_run_config(root, args.run_id), overrides)
    if args.cache_only:
        result = runner.cached_stage(config, root, args.run_id, args.name)
        outcome = "cached" if result else "missed"
        print(f"{args.name}: {'cached' if result else 'no cache hit: the stage must run'}")
    else:
        result = runner.run_stage(config, root, args.run_id, args.name, overrides, args.cache)
        outcome = "cached" if result.cached else "ran"
        print(f"{args.name}: done in {result.seconds:.1f}s{' (cached)' if result.cached else ''}")
    if args.result:
        Path(args.result).write_text(outcome)
    return 0


def _lifecycle(args) -> int:
    """`dae runs finish|fail RUN_ID`: a run's end, written by the last step of a workflow."""
    from dae.component import StageError
    from dae.pipeline import lifecycle

    if not args.run_id:
        raise StageError(f"dae runs {args.action} needs a RUN_ID")
    root = Path(args.root).expanduser()
    if args.action == "finish":
        metrics = lifecycle.finish_run(root, args.run_id)
        print(_summary(metrics, root, _model_name(root, metrics)))
        return 0
    reason = lifecycle.failure_reason(args.reason, args.failures)
    print(lifecycle.fail_run(root, args.run_id, reason))
    return 0


def _model_name(root: Path, metrics: dict) -> str:
    import yaml

    from dae.pipeline.config import Config

    config = root / "runs" / metrics["run_id"] / "config.yaml"
    return Config.model_validate(yaml.safe_load(config.read_text())).push.model_name


def _argo(args) -> int:
    """`dae argo compile`: the DAG, a config and a layout as Argo Workflows manifests."""
    from dae.pipeline import argo
    from dae.pipeline.config import load_config

    config = load_config(args.config, args.profile, args.overrides)
    text = argo.render(argo.compile_pipeline(config, argo.load_layout(args.layout)))
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _history(args) -> int:
    import json

    from dae.component import StageError
    from dae.pipeline import history
    from dae.pipeline.metadata import ENV_URL, MetadataStore, store_url

    root = Path(args.root).expanduser()
    url = store_url(None, root)
    if url.startswith("sqlite") and not (root / "metadata.sqlite").is_file():
        raise StageError(
            f"no metadata store under {root} (has `dae run` used this --root? "
            f"A server database is read from ${ENV_URL})"
        )
    store = MetadataStore(url)
    if args.command == "lineage":
        info = history.lineage(store, root, args.name, args.version)
        print(json.dumps(info, indent=2) if args.json else history.lineage_text(info))
    elif args.action == "list":
        print(history.runs_list(store))
    else:
        if not args.run_id:
            raise StageError("dae runs show needs a RUN_ID")
        print(history.runs_show(store, args.run_id))
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


_TERMINAL = None  # the real stderr, when native log lines are filtered (progress bars)


def _quiet_libraries(args) -> None:
    """TensorFlow's native start-up lines and known harmless warnings stay off the screen,
    unless --verbose or the user's own TF_CPP_MIN_LOG_LEVEL asks for them."""
    global _TERMINAL
    if getattr(args, "verbose", False) or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    from dae.pipeline import console

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    console.quiet_python_warnings()
    if _TERMINAL is None:
        _TERMINAL = console.filter_native_logs()


def main(argv: list[str] | None = None) -> int:
    # A Kubernetes Job is stopped with SIGTERM: record the run as failed, like Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    args = _parser().parse_args(argv)
    _quiet_libraries(args)
    import sqlalchemy as sa

    from dae.component import StageError
    from dae.pipeline.config import ConfigError
    from dae.pipeline.locks import RootBusy

    try:
        return _dispatch(args)
    except ConfigError as e:
        print(f"dae: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RootBusy as e:
        print(f"dae: error: {e}", file=sys.stderr)
        return EXIT_BUSY
    except sa.exc.OperationalError as e:  # the server's words, never the URL's password
        reason = str(e.orig or e).strip().splitlines()[0]
        print(f"dae: error: the metadata store cannot be reached: {reason}", file=sys.stderr)
        return EXIT_FAILED
    except StageError as e:
        print(f"dae: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as e:
        print(f"dae: interrupted{f' ({e})' if str(e) else ''}", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: the traceback helps, the last line says
        traceback.print_exc()
        print(f"dae: error: internal: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
