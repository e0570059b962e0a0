"""Sweep efficiency: Optuna TPE (with and without ASHA) vs random search on the same budget.

Question: what fraction of random search's compute does the sweep's search need to reach the
best value random search found (goal: at most 40%)?

Objective (real and cheap, no Ray per trial): train a classifier head on frozen MiniLM
sentence embeddings of MR (the builtin encoder and data) with one of three robust-training
methods and score **robust accuracy**: held-out accuracy under a 10-step L2 PGD attack in
embedding space. The space is conditional like a sweep's: ``method`` first, then that method's
knobs, plus shared optimisation settings:

- vanilla: no knobs;  noise: sigma (log);  adversarial (PGD training): epsilon (log), steps,
  clean_weight;
- shared: lr (log), weight_decay (log), hidden width (0 = linear), dropout.

Compute is counted in training epochs; every trial trains at most ``--epochs`` epochs and the
budget is ``--trials`` random trials x ``--epochs``. The searches use the sweep's own TPE
settings (``robustsweep.sweep.search.make_sampler``: multivariate, group, constant liar,
startup = total/4 clamped to [2, 10]); "+ASHA" adds asynchronous successive halving
(Optuna's SuccessiveHalvingPruner with the sweep's ASHA defaults: reduction factor 2,
grace period 1 epoch). Only trials that ran to the end count as reaching a value; random
search and TPE use different seeds, so TPE's random start-up does not replay random search.

Run:  .venv/bin/python benchmarks/sweep_efficiency.py --seeds 10 --trials 30 --epochs 12
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import optuna
import torch
import torch.nn.functional as F

from robustsweep.config import DataConfig, SweepConfig
from robustsweep.data import load_task
from robustsweep.resources import builtin_encoder_dir, cache_dir
from robustsweep.sweep.search import make_sampler

EVAL_EPS = 2.0  # L2 radius of the evaluation attack on z-scored 384-d embeddings (norm ~ 19.6)


# --------------------------------------------------------------------------------------------
# Data: MiniLM mean-pooled embeddings of MR, computed once and cached


def embeddings(
    train_size: int, eval_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    path = cache_dir() / "benchmarks" / f"mr_minilm_{train_size}_{eval_size}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        return saved["xtr"], saved["ytr"], saved["xev"], saved["yev"]
    from transformers import AutoModel, AutoTokenizer

    task = load_task(DataConfig(source="builtin:mr", train_size=train_size, eval_size=eval_size))
    model_dir = str(builtin_encoder_dir())
    tokenizer, model = (
        AutoTokenizer.from_pretrained(model_dir),
        AutoModel.from_pretrained(model_dir).eval(),
    )

    def encode(texts: list[str]) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), 64):
                batch = tokenizer(
                    texts[start : start + 64],
                    truncation=True,
                    max_length=64,
                    padding=True,
                    return_tensors="pt",
                )
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                out.append((hidden * mask).sum(1) / mask.sum(1))
        return torch.cat(out)

    xtr, xev = encode(task.train.texts), encode(task.eval.texts)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xev = (xtr - mean) / std, (xev - mean) / std
    ytr, yev = torch.tensor(task.train.labels), torch.tensor(task.eval.labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"xtr": xtr, "ytr": ytr, "xev": xev, "yev": yev}, path)
    return xtr, ytr, xev, yev


# --------------------------------------------------------------------------------------------
# The objective: one epoch at a time, so ASHA can stop it


def pgd_l2(
    head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int
) -> torch.Tensor:
    """Inputs moved within an L2 ball of radius ``eps`` to raise the loss (normalised steps)."""
    delta = torch.zeros_like(x)
    step = 2.5 * eps / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(head(x + delta), y), delta)
        delta = delta.detach() + step * grad / (grad.norm(dim=1, keepdim=True) + 1e-12)
        norms = delta.norm(dim=1, keepdim=True)
        delta = delta * torch.clamp(eps / (norms + 1e-12), max=1.0)
    return (x + delta).detach()


class Run:
    """One configuration of the conditional space, trainable one epoch at a time."""

    def __init__(self, params: dict, data: tuple, seed: int) -> None:
        self.p = params
        self.xtr, self.ytr, self.xev, self.yev = data
        torch.manual_seed(seed)
        dim, hidden = self.xtr.shape[1], params["hidden"]
        layers: list[torch.nn.Module] = [torch.nn.Dropout(params["dropout"])]
        layers += (
            [torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 2)]
            if hidden
            else [torch.nn.Linear(dim, 2)]
        )
        self.head = torch.nn.Sequential(*layers)
        self.opt = torch.optim.AdamW(
            self.head.parameters(), lr=params["lr"], weight_decay=params["weight_decay"]
        )
        self.gen = torch.Generator().manual_seed(seed)

    def epoch(self) -> float:
        """Train one epoch, return robust accuracy on the held-out embeddings."""
        self.head.train()
        order = torch.randperm(len(self.xtr), generator=self.gen)
        method = self.p["method"]
        for start in range(0, len(order), 64):
            x, y = self.xtr[order[start : start + 64]], self.ytr[order[start : start + 64]]
            if method == "noise":
                loss = F.cross_entropy(
                    self.head(x + self.p["noise.sigma"] * torch.randn_like(x)), y
                )
            elif method == "adversarial":
                x_adv = pgd_l2(
                    self.head, x, y, self.p["adversarial.epsilon"], self.p["adversarial.steps"]
                )
                w = self.p["adversarial.clean_weight"]
                loss = w * F.cross_entropy(self.head(x), y) + (1 - w) * F.cross_entropy(
                    self.head(x_adv), y
                )
            else:
                loss = F.cross_entropy(self.head(x), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        self.head.eval()
        x_adv = pgd_l2(self.head, self.xev, self.yev, EVAL_EPS, 10)
        with torch.no_grad():
            return float((self.head(x_adv).argmax(1) == self.yev).float().mean())


def define_space(trial: optuna.Trial) -> dict:
    """Method first, then only its knobs (as robustsweep's TrialSpace does), then shared ones."""
    method = trial.suggest_categorical("method", ["vanilla", "noise", "adversarial"])
    if method == "noise":
        trial.suggest_float("noise.sigma", 0.01, 3.0, log=True)
    elif method == "adversarial":
        trial.suggest_float("adversarial.epsilon", 0.05, 5.0, log=True)
        trial.suggest_int("adversarial.steps", 1, 3)
        trial.suggest_float("adversarial.clean_weight", 0.0, 1.0)
    trial.suggest_float("lr", 1e-4, 3e-1, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True)
    trial.suggest_categorical("hidden", [0, 64, 256])
    trial.suggest_float("dropout", 0.0, 0.5)
    return trial.params


# --------------------------------------------------------------------------------------------
# Searches on one budget


@dataclass
class Curve:
    """(epochs spent when a trial completed, its final value), in completion order."""

    points: list[tuple[int, float]]
    spent: int
    trials: int
    pruned: int = 0

    def best(self) -> float:
        return max(v for _, v in self.points)

    def epochs_to_reach(self, target: float) -> int | None:
        return next((spent for spent, value in self.points if value >= target - 1e-12), None)


def random_search(data: tuple, trials: int, epochs: int, seed: int) -> Curve:
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed)
    )
    points, spent = [], 0
    for _ in range(trials):
        trial = study.ask()
        run = Run(define_space(trial), data, seed + trial.number)
        for _ in range(epochs):
            value = run.epoch()
        spent += epochs
        points.append((spent, value))
        study.tell(trial, value)
    return Curve(points, spent, trials)


def optuna_search(
    data: tuple, budget: int, epochs: int, seed: int, total_trials: int, asha: bool
) -> Curve:
    # Another seed than random search's: TPE's random start-up trials must not replay them.
    sampler = make_sampler(SweepConfig(num_samples=total_trials), seed + 10_000)
    pruner = (
        optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
        if asha
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    points, spent, n, pruned = [], 0, 0, 0
    while spent < budget:
        trial = study.ask()
        run = Run(define_space(trial), data, seed + trial.number)
        n += 1
        stopped = False
        for epoch in range(1, epochs + 1):
            if spent >= budget:
                stopped = True
                break
            value = run.epoch()
            spent += 1
            trial.report(value, epoch)
            if epoch < epochs and trial.should_prune():
                stopped = True
                pruned += 1
                break
        if stopped:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        points.append((spent, value))
        study.tell(trial, value)
    return Curve(points, spent, n, pruned)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--trials", type=int, default=30, help="random-search trials (sets the budget)"
    )
    parser.add_argument("--epochs", type=int, default=12, help="epochs per full trial")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--eval-size", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    started = time.time()
    data = embeddings(args.train_size, args.eval_size)
    budget = args.trials * args.epochs
    print(
        f"objective: robust accuracy (L2 PGD, eps={EVAL_EPS}) of a head on MiniLM embeddings of MR "
        f"({args.train_size} train / {args.eval_size} held out)"
    )
    print(
        f"budget: {args.trials} random trials x {args.epochs} epochs = {budget} epochs per search, "
        f"{args.seeds} seeds\n"
    )
    rows = {"random (own best)": [], "TPE": [], "TPE + ASHA": []}
    print(
        f"{'seed':>4}  {'random best':>11}  {'random':>7}  {'TPE':>7}  {'TPE+ASHA':>8}  "
        f"{'TPE best':>8}  {'ASHA best':>9}  {'ASHA trials (pruned)':>20}"
    )
    for seed in range(args.seeds):
        rand = random_search(data, args.trials, args.epochs, seed)
        target = rand.best()
        tpe = optuna_search(data, budget, args.epochs, seed, args.trials, asha=False)
        asha = optuna_search(data, budget, args.epochs, seed, args.trials, asha=True)
        fractions = [rand.epochs_to_reach(target) / budget]
        for curve in (tpe, asha):
            reached = curve.epochs_to_reach(target)
            fractions.append(reached / budget if reached is not None else math.inf)
        for key, value in zip(rows, fractions):
            rows[key].append(value)
        shown = [f"{f:.0%}" if math.isfinite(f) else "never" for f in fractions]
        print(
            f"{seed:>4}  {target:>11.4f}  {shown[0]:>7}  {shown[1]:>7}  {shown[2]:>8}  "
            f"{tpe.best():>8.4f}  {asha.best():>9.4f}  {f'{asha.trials} ({asha.pruned})':>20}"
        )
    print("\nfraction of the random-search budget needed to reach random search's best value:")
    for key, values in rows.items():
        finite = [v for v in values if math.isfinite(v)]
        never = len(values) - len(finite)
        median = statistics.median(values) if not never or never <= len(values) // 2 else math.inf
        mean = statistics.mean(finite) if finite else math.inf
        print(
            f"  {key:<18} median {median:.0%}  mean(reached) {mean:.0%}  "
            f"reached in {len(finite)}/{len(values)} seeds"
            if math.isfinite(median)
            else f"  {key:<18} median never  reached in {len(finite)}/{len(values)} seeds"
        )
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
