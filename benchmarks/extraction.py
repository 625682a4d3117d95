"""Extraction and store benchmarks: prints ratios measured side by side in one run.

    python benchmarks/extraction.py [--quick] [--backbone minilm]

The same runner as `audit bench --only extraction --only store_read`.
"""

from __future__ import annotations

import argparse

from audit.bench import run_benchmarks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized run (seconds)")
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    run = run_benchmarks(
        quick=args.quick,
        backbone_spec=args.backbone,
        device=args.device,
        only=["extraction", "store_read"],
    )
    print(run.markdown)
    print(f"written: {run.json_path}")


if __name__ == "__main__":
    main()
