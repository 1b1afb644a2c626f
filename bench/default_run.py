"""The default profile on a fresh root, as `make run` runs it: each stage's time, the test
PSNR and SSIM, and the verdicts against issue 18's targets (stages within 600 s on 2 cores,
PSNR at least 21.2 dB on MNIST). Run it with nothing else on the machine.

  .venv/bin/python bench/default_run.py [--root DIR] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS, TARGET_PSNR_DB = 600.0, 21.2
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="a fresh pipeline root (default: a temporary folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="dae-default-"))
    if (root / "runs").exists():
        parser.error(f"{root} has runs already: the benchmark needs a fresh root")
    dae = str(Path(sys.executable).with_name("dae"))
    cmd = [dae, "run", "--config", str(CONFIG), "--root", str(root), "--no-cache", "--quiet"]
    cmd += [a for s in args.overrides for a in ("--set", s)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    (run,) = (root / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    stages = metrics["stage_seconds"]
    for stage, seconds in stages.items():
        print(f"{stage:<10} {seconds:8.1f} s")
    total = sum(stages.values())
    print(f"{'stages':<10} {total:8.1f} s   (process wall time {wall:.1f} s)")
    print(
        f"PSNR {metrics['psnr_noisy']:.2f} -> {metrics['psnr_denoised']:.2f} dB, "
        f"SSIM {metrics['ssim_noisy']:.3f} -> {metrics['ssim_denoised']:.3f}"
    )
    time_ok, psnr_ok = total <= TARGET_SECONDS, metrics["psnr_denoised"] >= TARGET_PSNR_DB
    print(
        f"stages {total:.0f} s (target <= {TARGET_SECONDS:.0f} s): {'PASS' if time_ok else 'FAIL'}"
    )
    print(
        f"PSNR {metrics['psnr_denoised']:.2f} dB (target >= {TARGET_PSNR_DB} dB): "
        f"{'PASS' if psnr_ok else 'FAIL'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
