"""One machine-readable record per benchmark run: what was measured, on what, when, by which command.

Every benchmark writes its figures with :func:`write` to ``benchmarks/results/NAME.json`` (``--json PATH``
elsewhere, ``--json ''`` for none); ``benchmarks/report.py`` turns the latest records into the performance
page of the docs and the README's table, so that no figure is copied by hand.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def default_path(name: str, device: torch.device | str = "cpu") -> str:
    """``benchmarks/results/NAME.json``, with ``_cuda`` before the suffix for a run on a GPU."""
    suffix = "" if torch.device(device).type == "cpu" else f"_{torch.device(device).type}"
    return str(RESULTS / f"{name}{suffix}.json")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str = "cpu") -> dict:
    """The machine a figure was measured on: the CPU, its cores, torch's threads, the device, torch's build."""
    device = torch.device(device)
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "python": platform.python_version()}


def command(argv: list[str] | None = None) -> str:
    """The command line that ran this benchmark, without where it wrote its record (``--json``)."""
    argv = list(sys.argv if argv is None else argv)
    words, skip = ["python", f"benchmarks/{Path(argv[0]).name}"], False
    for word in argv[1:]:
        if skip or word.startswith("--json="):
            skip = False
            continue
        if word == "--json":
            skip = True
            continue
        words.append(word)
    return " ".join(words)


def write(path: str | None, benchmark: str, workload: str, figures: dict, device: torch.device | str = "cpu",
          **extra) -> None:
    """Write one run's record to ``path`` (nothing when it is empty): ``benchmark`` names the renderer in
    ``benchmarks/report.py``, ``figures`` holds the measured numbers, ``extra`` any settings worth keeping."""
    if not path:
        return
    record = {"benchmark": benchmark, "workload": workload, "date": time.strftime("%Y-%m-%d"), "command": command(),
              "machine": machine(device), **extra, "figures": figures}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
