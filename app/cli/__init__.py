"""The ``bridge`` command line (also ``python -m bridge``).

Each sub-command lives in its own module and is imported only when it runs, so that
``bridge --help`` stays fast and a broken optional framework cannot break other commands.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from bridge.format.errors import BridgeError

# name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "export": "app.cli.export_cmd:export",
    "inspect": "app.cli.inspect_cmd:inspect",
    "simulate": "app.cli.simulate_cmd:simulate",
    "validate": "app.cli.validate_cmd:validate",
    "evaluate": "app.cli.evaluate_cmd:evaluate",
    "demo": "app.cli.demo_cmd:demo",
}

SHORT_HELP: dict[str, str] = {
    "export": "Convert a trained model to NIR, SpikingJelly or Norse.",
    "inspect": "Show the nodes, thresholds and semantics of a NIR file.",
    "simulate": "Run a NIR graph with the reference simulator.",
    "validate": "Check every backend against the reference, step by step.",
    "evaluate": "Accuracy vs time-steps of a model or NIR file on your data.",
    "demo": "Train, convert, calibrate, export, validate and report on digits and MNIST-1D.",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SHORT_HELP[name]) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  bridge demo                                   # the whole pipeline on the embedded digits
  bridge export model.pt2 --to nir -o model.nir
  bridge export weights.pt --arch mypkg.nets:vgg16 --to nir -o model.nir
  bridge inspect model.nir
  bridge simulate model.nir --input digits --steps 8
  bridge export model.nir --to spikingjelly -o sj_model/
  bridge validate model.nir --backends reference,spikingjelly,norse --steps 32 --data digits

On Linux `bridge` may also name iproute2's network tool: `python -m bridge` always works.""",
)
@click.version_option(package_name="bridge-snn", prog_name="bridge")
def cli() -> None:
    """bridge: trained ANNs to low-latency spiking networks, through NIR."""


def _quiet_framework_logs() -> None:
    # torch logs "Triton not available" at WARNING when SpikingJelly imports on a CPU-only
    # machine: true, harmless, and noise in every command's output.
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; user errors print one line and exit 2 (1 for failed checks).

    A run stopped by an error or a signal says what it left on disk: nothing, or the outputs
    that were completely written before it stopped (:func:`bridge.format.output_files.disk_state`);
    no temporary file is left behind.
    """
    from bridge.format.output_files import noting_outputs, remove_own_temps, termination_handlers

    _quiet_framework_logs()
    try:
        # SIGTERM unwinds like Ctrl-C: temp files are removed; the outputs written are noted
        with noting_outputs(), termination_handlers():
            return _run(argv)
    finally:
        remove_own_temps()  # a signal that interrupted a cleanup: the temp files go now


def _unwrap(exc: BaseException) -> BaseException | None:
    """A DataLoader worker's error as its own one-line error (None for any other error)."""
    if "DataLoader worker process" not in str(exc):
        return None  # bridge.data.streaming imports torch: only on this path
    from bridge.data.streaming import unwrap_worker_error

    unwrapped = unwrap_worker_error(exc)
    return None if unwrapped is exc else unwrapped


def _run(argv: list[str] | None) -> int:
    from bridge.format.output_files import Terminated, disk_state, written_outputs

    def error(message: str) -> None:
        # one line, always: a library's message may carry newlines
        line = " ".join(message.split())
        if written_outputs():
            line += f" ({disk_state()})"
        click.echo(f"bridge: error: {line}", err=True)

    try:
        cli.main(args=argv, prog_name="bridge", standalone_mode=False)
    except BridgeError as exc:
        shown = _unwrap(exc) or exc  # a DataLoader worker's error: its own message
        error(str(shown))
        return getattr(shown, "exit_code", exc.exit_code)
    except Terminated as exc:
        click.echo(f"bridge: terminated by signal {exc.signum}; {disk_state()}", err=True)
        return 128 + exc.signum
    except OSError as exc:  # the environment (disk, permissions) after every check passed
        from bridge.format.input_files import describe_os_error

        where = f" {exc.filename}" if exc.filename else ""
        error(f"cannot complete the command:{where}: {describe_os_error(exc)}")
        return 2
    except MemoryError:
        error("out of memory; use fewer samples (--limit, --batch-size) or fewer --steps")
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(f"bridge: interrupted; {disk_state()}", err=True)
        return 130
    except click.ClickException as exc:
        # click's usage block is several lines; bridge's contract is one line per error
        message = " ".join(exc.format_message().split())
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see `{exc.ctx.command_path} --help`)"
        error(f"{message}{hint}")
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except Exception as exc:
        shown = _unwrap(exc)  # a DataLoader worker failed reading the data
        if shown is None:
            raise  # a bug: its traceback is what a report needs
        error(str(shown))
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
