"""The `atoms` command.

Each subcommand lives in the module that does the work: the module defines
`configure_parser(parser)` and `cli_main(args) -> int`. This file only routes, so that
`atoms --help` stays quick and every module owns its own options, and turns errors into one-line
messages that name the path and the fix (`atoms --debug ...` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("atomslib.demo", "a one-minute tour: theorems on synthetic atoms, then R² and q* of neurons vs atoms"),
    "info": ("atomslib.demo", "print versions, the embedded model and corpus, and where caches live"),
    "harvest": ("atomslib.harvesting", "run a model over a corpus once and store hooked activations as validated shards"),
    "train": ("atomslib.train_cli", "train a threshold SAE (atoms) or a ReLU SAE (features) on a harvested cache"),
    "run": ("atomslib.book.cli_run", "execute the book's notebooks with papermill (one, or --all for a profile)"),
    "page": ("atomslib.book.page", "render one executed notebook as a web page in the book's style (offline math, "
             "citations), e.g. after atoms run NB -p KEY=VALUE"),
    "export": ("atomslib.interop_saelens", "export a trained TSAE / ReLU SAE to another library's format (SAELens)"),
    "cache": ("atomslib.cache_repair", "verify a harvested activation cache, or repair it (re-harvests only "
              "missing or corrupt shards)"),
    "bundle": ("atomslib.bundle", "pack the embedded models, the corpus and optional wheels into 50 MB pieces "
               "with sha256s, for a machine without network"),
    "unbundle": ("atomslib.bundle", "check every piece of a bundle and install it (models where atomslib looks)"),
}

DESCRIPTION = """\
atoms: the reproducible companion to "Towards Atoms of Large Language Models" (Hu et al., 2025).

Typical session (all offline, on the embedded SmolLM2-135M and Wikipedia corpus):
  atoms demo                                   # the theory in one minute
  atoms harvest --layers 3,15 --tokens 20000 --out runs/acts
  atoms train runs/acts --layer 15 --units 2304 --out runs/tsae15
  atoms run --all --profile quick              # execute every notebook of the book
  atoms run 01_theory -p H=32 --html           # one chapter on other values, as a web page
  atoms export --format saelens runs/tsae15 runs/tsae15-saelens

Run `atoms SUBCOMMAND --help` for the options of each subcommand.
"""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atoms", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    debug_help = "on an error, show the Python traceback instead of a one-line message"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
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
    debug = args.debug or os.environ.get("ATOMS_DEBUG", "") not in ("", "0")
    try:
        from .wording import cli_wording
        mod = importlib.import_module(args._module)
        run = getattr(mod, f"cli_{args._name}", None) or mod.cli_main
        with cli_wording():   # messages name this command's flags, not the library's keywords
            return int(run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted; completed work is kept and the command resumes where it stopped", file=sys.stderr)
        return 130
    except Exception as e:
        message = describe_error(e)
        if debug or message is None:   # an unexpected error is a bug: its traceback is what to report
            raise
        print(f"atoms {args._name}: error: {message}", file=sys.stderr)
        return 2


_OS_FIXES = {
    errno.ENOSPC: "no space left on the device: free some space or pass another output folder, then run the same "
                  "command again (completed work is kept and it resumes)",
    errno.EDQUOT: "disk quota exceeded: free some space or pass another output folder, then run the same command "
                  "again (completed work is kept and it resumes)",
    errno.EROFS: "read-only file system: pass an output folder on a writable disk",
    errno.EACCES: "permission denied: pass a folder you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted: pass a folder you can write to, or fix its permissions",
    errno.EEXIST: "it exists already: pass another path, or remove it",
    errno.ENOTDIR: "a part of the path is a file, not a folder: pass a folder path",
    errno.EISDIR: "it is a folder where a file was expected: pass a file path",
    errno.ENOENT: "it does not exist: check the path",
    errno.ENAMETOOLONG: "the path, or a name in it, is too long for this file system: pass a shorter path",
}


def describe_error(e: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for an unexpected one (a bug)."""
    if isinstance(e, OSError) and e.errno in _OS_FIXES:
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f)
        return f"{where}: {_OS_FIXES[e.errno]}" if where else _OS_FIXES[e.errno]
    if isinstance(e, (ValueError, TypeError, OSError, RuntimeError)):
        # Library errors are written to be read by a person: show them without a traceback.
        return str(e)
    if type(e).__module__.split(".")[0] == "yaml":   # a YAML file the loader did not wrap
        return f"{e}".replace("\n", " ") + "; fix the YAML syntax at the line shown"
    return None


if __name__ == "__main__":
    sys.exit(main())
