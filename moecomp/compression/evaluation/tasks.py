"""Zero-shot accuracy through lm-eval on the model already loaded (no second load, no hub for the model).

Local tasks (moecomp/assets/tasks/*.yaml) are read here and handed to lm-eval as config dicts with
their data files made absolute; any other name is an lm-eval registry task (it downloads its dataset,
so it needs the network or a filled HF datasets cache).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from moecomp.compression.evaluation.loading import LoadedModel
from moecomp.compression.evaluation.local_tasks import LOCAL_TASKS, TASKS_DIR


def local_task_config(name: str, tasks_dir: Path = TASKS_DIR) -> dict[str, Any] | None:
    """The lm-eval config dict of local task ``name`` with absolute data paths, or None if not local."""
    path = tasks_dir / f"{name}.yaml"
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text())
    files = config.get("dataset_kwargs", {}).get("data_files", {})
    config["dataset_kwargs"]["data_files"] = {split: str(tasks_dir / f) for split, f in files.items()}
    return config


def _wrap(loaded: LoadedModel, batch_size: int):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size, device=str(loaded.device))


class TaskUnavailable(ValueError):
    """A task that lm-eval cannot load here: an unknown name, or a registry task whose data is unreachable."""


def run_task(loaded: LoadedModel, name: str, *, limit: int | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Accuracy of ``loaded`` on one task: acc (and acc_norm, stderr where lm-eval gives them), n examples."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager, get_task_dict

    task = local_task_config(name) or name
    manager = TaskManager()  # indexes lm-eval's registry: seconds, so made once per task run
    try:
        get_task_dict([task], manager)  # loads the dataset: fail here with a message, not mid-run
    except Exception as exc:
        raise TaskUnavailable(
            f"task {name!r} could not be loaded ({type(exc).__name__}: {exc}); local tasks: "
            f"{', '.join(LOCAL_TASKS)}; registry tasks need the network or a filled HF datasets cache"
        ) from exc
    out = simple_evaluate(
        model=_wrap(loaded, batch_size),
        tasks=[task],
        task_manager=manager,
        limit=limit,
        bootstrap_iters=0,
        log_samples=False,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    metrics = out["results"][name]
    result: dict[str, Any] = {"n": int(out["n-samples"][name]["effective"]), "local": task is not name}
    for metric in ("acc", "acc_norm"):
        if f"{metric},none" in metrics:
            p = float(metrics[f"{metric},none"])
            # Binomial standard error; lm-eval's own needs bootstrap iterations we skip for speed.
            result[metric], result[f"{metric}_stderr"] = p, math.sqrt(p * (1 - p) / max(1, result["n"] - 1))
    if "acc" not in result:
        raise TaskUnavailable(f"task {name} reports no accuracy (metrics: {sorted(metrics)})")
    return result
