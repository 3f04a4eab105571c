"""``bioviz run CONFIG``'s own arguments (:func:`bioviz.cli.main` hands ``bioviz run ...`` here)."""

from __future__ import annotations

from .config import load_config, print_config
from .layout import STAGES
from .study import run_study
from .summary import format_summary

RUN_HELP = ("Run a whole study from one config: cohort → extract → train → encode → associate → interpret → "
            "report, each stage cached (run.json) and resumable; --from STAGE forces it and the later ones.")


def main(argv: list[str], trust: bool = False) -> int:
    """``bioviz run CONFIG [--from STAGE] [--print-config] [--progress false]``."""
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog="bioviz run", exit_on_error=False, description=RUN_HELP)
    p.add_argument("config", type=str, help="the study config (YAML)")
    p.add_argument("--from", dest="from_stage", type=str | None, default=None,
                   help=f"force this stage and every later one ({', '.join(STAGES)})")
    p.add_argument("--print-config", "--print_config", dest="print_config", action="store_true",
                   help="print the resolved config (every default filled in) and exit")
    p.add_argument("--progress", type=bool, default=True, help="progress bars and one line per stage")
    args = p.parse_args(argv)
    if args.print_config:
        print(print_config(load_config(args.config, trust=trust)), end="")
        return 0
    result = run_study(args.config, from_stage=args.from_stage, progress=args.progress, trust=trust)
    print(format_summary(result))
    return 0
