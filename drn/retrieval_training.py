"""Stage 4: train the retrieval head (``drn.retrieval``) of a trained DRN, in one process or wrapped by Ray Train.

DRN itself is frozen (no gradients, eval mode): the stage only learns to put a sentence next to the cells of the
videos that hold it, so its grounding metrics do not move and it can be added to any trained checkpoint.

* ``RetrievalBatches``: adds to a training batch of ``drn.data`` what the loss needs: ``retrieval.sampled_negatives``
  videos drawn from the training videos (``extra_video``) and the ``[B, B + K]`` mask of usable negatives. A video
  is never a negative for a query it holds, or holds a near paraphrase of: the training split's
  ``drn.negatives.NegativeFilter`` (same ``query_key``, or MiniLM cosine >= ``train.negatives.paraphrase_cosine``)
  decides, and a batch's own ``blocked`` [B, B] is honoured as well.
* ``retrieval_step``, ``video_recall`` (validation: every distinct text of a split ranked against every video of
  the split by its best cell; video R@k in percent) and ``train_retrieval`` (the plain loop; keeps the epoch with
  the best ``retrieval.select_metric`` and records it in the head's ``trained_epochs``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from drn.config import DRNConfig, model_differences
from drn.data import collate
from drn.errors import InputError
from drn.negatives import NegativeFilter, build_negative_filter
from drn.retrieval import RetrievalObjective, attach_retrieval_head
from drn.text.vocabulary import query_key

RECALL_AT = (1, 5, 10)


def retrieval_skip_reason(pairs) -> str | None:
    """Why stage 4 cannot learn from these training pairs (no video can be a negative for some text), or None."""
    videos = {pair.video_id for pair in pairs}
    holders: dict[str, set[str]] = {}
    for pair in pairs:
        holders.setdefault(query_key(pair.query), set()).add(pair.video_id)
    everywhere = next((key for key, held in holders.items() if held >= videos), None)
    if everywhere is not None:
        return (f"every one of the {len(videos)} training videos holds the query {everywhere!r}, so no video can be "
                "its negative; the checkpoint keeps an untrained retrieval stage (jobs.index_library refuses it)")
    return None


def retrieval_negative_filter(dataset, config: DRNConfig) -> NegativeFilter:
    """The training split's negative filter (``drn.negatives``), refused where some text is in every video."""
    try:
        return build_negative_filter(dataset.pairs, config.train.negatives.paraphrase_cosine)
    except InputError as error:
        raise InputError(f"the retrieval stage needs, for every query, videos that do not hold it: {error}"
                         .split("; set train.negatives")[0]) from None


class RetrievalBatches:
    """Turns training batches of ``drn.data`` (over ``dataset``) into batches of the retrieval loss."""

    def __init__(self, dataset, config: DRNConfig, negative_filter: NegativeFilter | None = None) -> None:
        self.dataset = dataset
        self.filter = negative_filter or retrieval_negative_filter(dataset, config)
        self.videos = sorted({pair.video_id for pair in dataset.pairs})
        self.sampled = config.retrieval.sampled_negatives

    def prepare(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        texts, own = list(batch["query"]), list(batch["video_id"])
        count = min(self.sampled, len(self.videos))
        order = torch.randperm(len(self.videos), generator=generator)[:count].tolist()
        picked = [self.videos[i] for i in order]
        usable = ~self.filter.blocked_matrix(texts, [*own, *picked]).numpy()
        if batch.get("blocked") is not None:
            usable[:, : len(texts)] &= ~np.asarray(batch["blocked"].cpu(), dtype=bool)
        video = batch["video"][: len(texts)]  # the rows' own videos (a batch with negative rows has more)
        grids = self.dataset.grids
        extra = (torch.from_numpy(np.stack([np.asarray(grids[v], dtype=np.float32) for v in picked]))
                 if picked else video.new_zeros((0, *video.shape[1:])))
        return {**batch, "video": video, "negatives": torch.from_numpy(usable), "extra_video": extra}


def retrieval_step(objective: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer,
                   grad_clip_norm: float) -> float:
    """One optimisation step of the (possibly DDP-wrapped) ``RetrievalObjective``; returns the loss."""
    loss = objective(batch["video"], batch["words"], batch["word_mask"], batch["gt"], batch["negatives"],
                     batch["extra_video"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, grad_clip_norm)
    optimizer.step()
    return float(loss.detach())


def prepare_retrieval_model(model: torch.nn.Module, checkpoint_config: DRNConfig, config: DRNConfig,
                            source: object = None) -> torch.nn.Module:
    """A loaded DRN ready for stage 4 with ``config``'s retrieval settings: its DRN part must match ``config``
    (InputError naming each difference); a head is added when it has none or one of another shape."""
    diffs = [d for d in model_differences(checkpoint_config, config)
             if not d.startswith(("model.word_dim", "model.retrieval_dim"))]
    if diffs:
        raise InputError("checkpoint was trained with another model config: " + "; ".join(diffs), path=source)
    head = getattr(model, "retrieval", None)
    fits = (head is not None and head.dim == config.model.retrieval_dim
            and head.widths == [int(w) for w in config.retrieval.cell_widths])
    if fits:
        model.config.retrieval = config.retrieval
        return model
    return attach_retrieval_head(model, config)


def freeze_for_retrieval(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Freeze DRN (no gradients, eval mode) and return the retrieval head's parameters, the only ones trained."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    params = list(model.retrieval.parameters())
    for p in params:
        p.requires_grad_(True)
    model.retrieval.train()
    return params


@torch.no_grad()
def retrieval_scores(model: torch.nn.Module, dataset, device: torch.device | str = "cpu",
                     batch_size: int = 256) -> tuple[list[str], list[str], np.ndarray]:
    """Distinct normalised texts, videos and ``[Q, V]`` best-cell cosines of a split's dataset."""
    head = model.retrieval
    was_training = head.training
    head.eval()
    first: dict[str, int] = {}
    for index, pair in enumerate(dataset.pairs):
        first.setdefault(query_key(pair.query), index)
    texts = list(first)
    videos = sorted({pair.video_id for pair in dataset.pairs})
    cells = []
    for start in range(0, len(videos), batch_size):
        grids = np.stack([np.asarray(dataset.grids[v], dtype=np.float32) for v in videos[start:start + batch_size]])
        cells.append(head.encode_cells(torch.from_numpy(grids).to(device)))
    cell_vectors = torch.cat(cells)  # [V, C, R]
    queries = []
    for start in range(0, len(texts), batch_size):
        batch = collate([dataset[first[t]] for t in texts[start:start + batch_size]])
        features = model.encode_query(batch["words"].to(device), batch["word_mask"].to(device))
        queries.append(head.encode_query(features))
    query_vectors = torch.cat(queries)
    scores = torch.einsum("qr,vcr->qvc", query_vectors, cell_vectors).amax(dim=-1)
    head.train(was_training)
    return texts, videos, scores.cpu().numpy()


def video_recall(model: torch.nn.Module, dataset, device: torch.device | str = "cpu",
                 ks: Iterable[int] = RECALL_AT) -> dict[str, float]:
    """Video R@k (percent): the share of distinct texts with a video that holds them among their k best videos."""
    texts, videos, scores = retrieval_scores(model, dataset, device)
    holders: dict[str, set[str]] = {}
    for pair in dataset.pairs:
        holders.setdefault(query_key(pair.query), set()).add(pair.video_id)
    position = {v: i for i, v in enumerate(videos)}
    ranks = []
    for q, text in enumerate(texts):
        order = np.argsort(-scores[q], kind="stable")
        rank_of = np.empty(len(order), dtype=np.int64)
        rank_of[order] = np.arange(len(order))
        ranks.append(min(rank_of[position[v]] for v in holders[text]))
    ranks_array = np.array(ranks)
    return {f"video R@{k}": float(100.0 * np.mean(ranks_array < k)) for k in ks}


def selection_value(metrics: dict[str, float], metric: str) -> tuple[float, float]:
    if metric not in metrics:
        raise ValueError(f"retrieval.select_metric {metric!r} is not among {sorted(metrics)}")
    return metrics[metric], metrics.get("video R@1", 0.0)


@dataclass
class RetrievalStageResult:
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


def train_retrieval(
    model: torch.nn.Module, train_batches: Iterable[dict], train_dataset, val_dataset, config: DRNConfig, *,
    progress: bool = False, report: Callable[[dict[str, Any]], None] | None = None,
    negative_filter: NegativeFilter | None = None,
) -> RetrievalStageResult:
    """Train the head for ``retrieval.epochs`` epochs; keep (and load) the best validation epoch's weights."""
    device = next(model.parameters()).device
    params = freeze_for_retrieval(model)
    objective = RetrievalObjective(model).to(device)
    optimizer = torch.optim.Adam(params, lr=config.retrieval.lr)
    batches = RetrievalBatches(train_dataset, config, negative_filter)
    generator = torch.Generator().manual_seed(config.train.seed)
    result = RetrievalStageResult(best_epoch=0, best_metrics={})
    best_key, best_state = (-1.0, -1.0), None
    for epoch in range(1, config.retrieval.epochs + 1):
        started, total, pairs = time.perf_counter(), 0.0, 0
        for batch in tqdm(train_batches, desc="stage 4", leave=False, disable=not progress):
            prepared = {k: v.to(device) if torch.is_tensor(v) and k != "duration" else v
                        for k, v in batches.prepare(batch, generator).items()}
            total += retrieval_step(objective, prepared, optimizer, config.train.grad_clip_norm) * len(batch["qid"])
            pairs += len(batch["qid"])
        seconds = time.perf_counter() - started
        metrics = video_recall(model, val_dataset, device)
        record = {"stage": 4, "epoch": epoch, "loss_retrieval": total / max(pairs, 1), "pairs": pairs,
                  "seconds": seconds, "pairs_per_s": pairs / seconds if seconds > 0 else 0.0, "val": metrics}
        key = selection_value(metrics, config.retrieval.select_metric)
        if key > best_key:
            best_key, best_state = key, copy.deepcopy(model.retrieval.state_dict())
            result.best_epoch, result.best_metrics = epoch, metrics
        result.history.append(record)
        if report is not None:
            report(record)
    if best_state is not None:
        model.retrieval.load_state_dict(best_state)
    model.retrieval.trained_epochs.fill_(result.best_epoch)
    model.eval()
    return result
