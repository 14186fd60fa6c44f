"""Latency-constrained multi-objective search over the factory's module space, with optuna.

Each trial suggests one value per decision of the space (each layer's op, each stage's width),
costs the selection with the target's latency model, and scores it like the factory does: the
supernet's inherited weights, recalibrated batch norms, task accuracy on validation data. The two
objectives are (accuracy up, latency down); the budget is an optuna constraint
(``latency - budget <= 0``), so the sampler (multi-objective TPE) learns where the feasible region
is and the Pareto front holds feasible trials only. Over-budget trials are not scored (their
accuracy is recorded as 0 and ``scored`` = False): scoring them would buy nothing.

The study lives in an optuna storage: a journal file by default, any RDB URL (``sqlite:///x.db``,
``postgresql://user@host/db``) otherwise; start the same command in several processes or on several
machines with the same ``--storage`` and ``--study`` and they share one study.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from edgefab.data import Dataset
from edgefab.data.tasks import Task
from edgefab.errors import EdgefabError
from edgefab.factory.customize import restrict
from edgefab.factory.scoring import score
from edgefab.factory.space import ModuleSelection
from edgefab.factory.store import Factory
from edgefab.targets.model import LatencyModel

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class OptunaOptions:
    """Settings of one search process."""

    budget_ms: float | None
    trials: int = 50  # trials this process runs (the study may hold more, from other processes)
    storage: str = "optuna-study.journal"  # a journal file path, or an RDB URL
    study_name: str = "edgefab"
    seed: int | None = 0
    val_samples: int = 500
    startup_trials: int = 10  # random trials before TPE models the objectives


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """An optuna storage from ``spec``: an RDB URL (``sqlite:///``, ``postgresql://``, ...) or a
    journal file path (safe for several processes on one file system)."""
    if "://" in spec:
        try:
            return _rdb_storage(spec)
        except (ImportError, ModuleNotFoundError) as error:
            raise EdgefabError(
                f"storage {spec}: {error}; install the database driver (e.g. psycopg2)"
            ) from None
        except Exception as error:  # sqlalchemy's errors name the URL problem
            raise EdgefabError(f"cannot open optuna storage {spec}: {str(error).splitlines()[0]}") from None
    from optuna.storages.journal import JournalFileBackend

    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(spec))


def _rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """optuna's RDB storage; retried while another worker is creating the same schema.

    Workers started together on an empty database (PostgreSQL) race to create optuna's tables,
    and the loser fails on a unique constraint; once the winner is done, opening again works.
    """
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def search(
    factory: Factory,
    task: Task,
    model: LatencyModel,
    train: Dataset,
    val: Dataset,
    options: OptunaOptions,
    progress: ProgressFn | None = None,
) -> optuna.Study:
    """Run ``options.trials`` trials of the shared study; ``train``/``val`` carry all-class labels."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, classes = factory.space, len(factory.classes)
    decisions = space.decisions()
    task_train, task_val = restrict(train, task), restrict(val, task)
    task_val = task_val.subset(list(range(min(options.val_samples, len(task_val)))))
    sampler = optuna.samplers.TPESampler(seed=options.seed, n_startup_trials=options.startup_trials)
    study = optuna.create_study(
        storage=open_storage(options.storage),
        study_name=options.study_name,
        directions=["maximize", "minimize"],
        sampler=sampler,
        load_if_exists=True,
    )
    _check_study(study, factory, task, options.budget_ms)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        values = [trial.suggest_categorical(name, list(choices)) for name, choices in decisions]
        selection = space.selection(values)
        ms = model.total_ms(space.arch(selection, classes))
        over = ms - options.budget_ms if options.budget_ms is not None else -1.0
        trial.set_constraint("latency_over_budget_ms", over)
        trial.set_user_attr("modules", selection.to_dict())
        trial.set_user_attr("scored", over <= 0)
        if over > 0:
            return 0.0, ms
        accuracy, _ = score(factory.supernet, selection, task_train, task_val, factory.prep, task)
        return accuracy, ms

    done = []

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done.append(trial.number)
        if progress:
            progress(len(done), options.trials)

    study.optimize(objective, n_trials=options.trials, callbacks=[report])
    return study


def _check_study(study: optuna.Study, factory: Factory, task: Task, budget_ms: float | None) -> None:
    """A shared study must keep one question: the same space, task and budget in every process."""
    question = {"space": factory.space.name, "task": task.text, "budget_ms": budget_ms}
    asked = study.user_attrs.get("question")
    if asked is None:
        study.set_user_attr("question", question)
    elif asked != question:
        raise EdgefabError(f"study '{study.study_name}' was started for {asked}, not {question}; "
                           "choose another --study or --storage")  # fmt: skip


def pareto_front(study: optuna.Study) -> list[dict[str, Any]]:
    """The feasible, scored Pareto-optimal trials, fastest first."""
    front = [t for t in study.best_trials if t.user_attrs.get("scored")]
    rows = [
        {
            "trial": t.number,
            "accuracy": round(t.values[0], 5),
            "latency_ms": round(t.values[1], 4),
            "modules": t.user_attrs["modules"],
        }  # fmt: skip
        for t in front
    ]
    return sorted(rows, key=lambda row: row["latency_ms"])


def best_within_budget(study: optuna.Study) -> tuple[ModuleSelection, dict[str, Any]] | None:
    """The most accurate scored trial (ties: the faster), or None if no trial was within budget."""
    front = pareto_front(study)
    if not front:
        return None
    best = max(front, key=lambda row: (row["accuracy"], -row["latency_ms"]))
    return ModuleSelection.from_dict(best["modules"]), best


def plot_front(study: optuna.Study, path: Path) -> None:
    """Accuracy against latency of every trial, the Pareto front highlighted, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed
    from matplotlib import pyplot as plt
    from optuna.visualization.matplotlib import plot_pareto_front

    with warnings.catch_warnings():  # plot_pareto_front is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = plot_pareto_front(study, target_names=["accuracy", "latency (ms)"])
    axes.figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(axes.figure)
