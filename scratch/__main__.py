"""``python -m scratch build``: train a domain's own teacher and student from scratch (scratch.build)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import scratch.build as build_module
from data.cli import add_dataclass_options, dataclass_from_args
from data.records import check_writable
from scratch.build import ScratchConfig, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scratch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train and cache the teacher and the student (reused when built, unless --force)",
                       description=build_module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_options(b, ScratchConfig)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = dataclass_from_args(ScratchConfig, args)
        check_writable(config.output_root(), "--out")
    except ValueError as e:  # DataError too
        print(f"error: {e}", file=sys.stderr)
        return 2
    infos = build(config)
    root = config.output_root()
    for who, info in infos.items():
        ev = info["eval"]
        print(f"{who}: {info['parameters'] / 1e6:.2f}M parameters, {info['steps']} steps in {info['train_seconds']:.0f} s; "
              f"eval accuracy {100 * ev['accuracy']:.1f}% on {ev['n']} items (spec scratch:{config.domain}/{who}, folder {root / who})")
        if start := info.get("initialised_from"):
            print(f"  started from {start['path']} ({start['steps']} steps, {start['eval']['accuracy']:.1%} eval); "
                  f"{info['total_train_seconds']:.0f} s of training in all")
        worst = sorted(ev["per_node"].items(), key=lambda kv: kv[1]["accuracy"])[:5]
        print("  lowest nodes: " + "; ".join(f"{k.split('/', 1)[1]} {100 * v['accuracy']:.0f}%" for k, v in worst))
    print(json.dumps({who: {"accuracy": i["eval"]["accuracy"], "train_seconds": i["train_seconds"]} for who, i in infos.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
