"""The `atoms` command.

Each subcommand lives in the module that does the work: the module defines
`configure_parser(parser)` and `cli_main(args) -> int`. This file only routes, so that
`atoms --help` stays quick and every module owns its own options.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("atomslib.demo", "a one-minute tour: theorems on synthetic atoms, then R² and q* of neurons vs atoms"),
    "info": ("atomslib.demo", "print versions, the embedded model and corpus, and where caches live"),
    "harvest": ("atomslib.harvest", "run a model over a corpus once and store hooked activations as validated shards"),
    "train": ("atomslib.train", "train a threshold SAE (atoms) or a ReLU SAE (features) on a harvested cache"),
    "run": ("atomslib.run", "execute the book's notebooks with papermill (one, or --all for a profile)"),
    "export": ("atomslib.interop", "export a trained TSAE / ReLU SAE to another library's format (SAELens)"),
}

DESCRIPTION = """\
atoms: the reproducible companion to "Towards Atoms of Large Language Models" (Hu et al., 2025).

Typical session (all offline, on the embedded SmolLM2-135M and Wikipedia corpus):
  atoms demo                                   # the theory in one minute
  atoms harvest --layers 3,15 --tokens 20000 --out runs/acts
  atoms train runs/acts --layer 15 --units 2304 --out runs/tsae15
  atoms run --all --profile quick              # execute every notebook of the book
  atoms export --format saelens runs/tsae15 runs/tsae15-saelens

Run `atoms SUBCOMMAND --help` for the options of each subcommand.
"""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atoms", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        # Only the chosen subcommand's module is imported: `atoms --help` needs none of them.
        if name == only:
            mod = importlib.import_module(module)
            configure = getattr(mod, f"configure_{name}_parser", None) or mod.configure_parser
            configure(p)
            p.set_defaults(_module=module, _name=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    mod = importlib.import_module(args._module)
    run = getattr(mod, f"cli_{args._name}", None) or mod.cli_main
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; completed work is kept and the command resumes where it stopped", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        # Library errors are written to be read by a person: show them without a traceback.
        print(f"atoms {args._name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
