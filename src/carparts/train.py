"""Training with PyTorch Lightning: the whole story, top to bottom.

config -> data split -> transforms -> model -> LightningModule -> Trainer.fit -> best weights exported to
``runs/<name>/model.safetensors`` + ``model.json`` -> native-resolution evaluation of the validation split.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from segmentation_models_pytorch.base import ClassificationHead, SegmentationModel
from segmentation_models_pytorch.losses import DiceLoss

from carparts.cars import VIEWPOINTS, find_cars
from carparts.classes import Taxonomy
from carparts.config import TrainConfig, load_config
from carparts.data import CocoDataset, SegmentationDataset, class_weights, load_coco, repeat_factors
from carparts.errors import CarpartsError
from carparts.images import check_output_folder, write_atomic
from carparts.metrics import ConfusionMatrix
from carparts.models import SPLIT_FILE, ModelInfo, build_model, load_start_weights, load_teacher, save_model
from carparts.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

MONITOR = "val/miou_parts"
PRESENT_SHARE = 5e-4
"""A part is present in a training photo (the presence head's label) when it covers at least this share of the
augmented photo's pixels: 62 px at 352 x 352, so that a sliver cut by the crop does not count."""


def parts_present(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(N, num_classes - 1)`` float 0/1 labels: which parts (classes 1..) each mask of ``(N, H, W)`` shows.

    From the augmented masks, so a flipped photo's labels are flipped with it."""
    counts = torch.stack([torch.bincount(m.flatten(), minlength=num_classes)[:num_classes] for m in masks])
    return (counts[:, 1:] >= PRESENT_SHARE * masks[0].numel()).float()


def viewpoint_labels(masks: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    """``(N,)`` labels for the viewpoint head: the index in :data:`carparts.cars.VIEWPOINTS` of the side that the
    largest car of each augmented mask shows (:func:`carparts.cars.find_cars`, the reading ``predict`` writes in its
    JSON), or -100 (ignored) where a mask shows no car or nothing of its side. About 10 ms a 352-px mask."""
    labels = []
    for mask in masks.cpu().numpy():
        cars = find_cars(mask, taxonomy)
        view = max(cars, key=lambda car: car.pixels).viewpoint if cars else None
        labels.append(VIEWPOINTS.index(view) if view else -100)
    return torch.tensor(labels, dtype=torch.long, device=masks.device)


def viewpoint_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the viewpoint head over the photos with a label (0, still in the graph, when none has)."""
    if not bool((labels >= 0).any()):
        return scores.sum() * 0.0
    return F.cross_entropy(scores, labels, ignore_index=-100)


class SegmentationLoss(torch.nn.Module):
    """``ce_dice``: cross-entropy + multiclass Dice; ``bce_dice``: one-hot BCE + Dice (the reference recipe's
    loss); ``ce``: cross-entropy alone. ``weight``, a buffer set from the training masks when
    ``class_weight_power`` asks for it (:func:`carparts.data.class_weights`), weighs the cross-entropy per class; it
    is not saved: every run recomputes it from its split."""

    weight: torch.Tensor | None

    def __init__(self, kind: str, num_classes: int):
        super().__init__()
        self.kind, self.num_classes = kind, num_classes
        self.dice = DiceLoss(mode="multilabel" if kind == "bce_dice" else "multiclass", from_logits=True)
        self.register_buffer("weight", None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "bce_dice":
            one_hot = F.one_hot(target, self.num_classes).permute(0, 3, 1, 2).float()
            return F.binary_cross_entropy_with_logits(logits, one_hot) + self.dice(logits, one_hot)
        ce = F.cross_entropy(logits, target, weight=self.weight)
        return ce if self.kind == "ce" else ce + self.dice(logits, target)


def warmup_cosine(total_steps: int, warmup_steps: int, cosine: bool):
    """LR multiplier per optimiser step: linear warm-up, then cosine decay to zero (or constant)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine:
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class SegmentationModule(L.LightningModule):
    """Model, loss, optimiser and the validation confusion matrix."""

    def __init__(self, config: dict[str, Any], taxonomy: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters()
        self.config = TrainConfig(**config)
        self.taxonomy = Taxonomy.from_dict(taxonomy)
        # a fine-tuning run gets its first weights from a trained model (see train()), not from ImageNet
        weights = "none" if self.config.init_from else self.config.encoder_weights
        self.model = build_model(self.config.arch, self.config.encoder, self.taxonomy.num_classes, weights)
        self.loss = SegmentationLoss(self.config.loss, self.taxonomy.num_classes)
        # training only: exported models hold `model.` alone (export_best), so every inference path is unchanged
        self.presence_head = self.build_image_head("presence_weight", self.taxonomy.num_classes - 1)
        self.viewpoint_head = self.build_image_head("viewpoint_weight", len(VIEWPOINTS))
        self.val_confusion = ConfusionMatrix(self.taxonomy.num_classes)
        self.val_loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of per-image losses, images)
        self.teacher: tuple[torch.nn.Module, ModelInfo] | tuple[()] = ()  # a tuple: not a submodule, not saved
        # the model ids behind init_from and distill_from ("bundled" names whatever is bundled at the time): they
        # travel in the checkpoints, so a resumed run still knows where its first weights came from
        self.sources: dict[str, str] = {}

    def build_image_head(self, setting: str, outputs: int) -> ClassificationHead | None:
        """smp's image-level head (average pool, dropout, linear) on the encoder's deepest features, for an
        auxiliary loss whose weight is the config key ``setting``; None while that weight is 0. See
        :meth:`segmentation_losses`."""
        if not getattr(self.config, setting):
            return None
        if type(self.model).forward is not SegmentationModel.forward:
            raise CarpartsError(
                f"{setting}: architecture '{self.config.arch}' does not run encoder -> decoder -> head, so it has no "
                f"encoder features to put an image-level head on; use 0 or another architecture"
            )
        return ClassificationHead(self.model.encoder.out_channels[-1], outputs, dropout=0.2)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sources"] = self.sources

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.sources = {**checkpoint.get("sources", {}), **self.sources}

    def set_teacher(self, teacher: torch.nn.Module, info: ModelInfo) -> None:
        """Distil from ``teacher`` (frozen, in eval mode): see :meth:`distillation_loss`."""
        self.teacher = (teacher.eval(), info)

    def on_fit_start(self) -> None:
        if self.teacher:
            self.teacher[0].to(self.device)

    def setup(self, stage: str) -> None:
        """Before every fit or validation: the loss's class weights from the data module's training split (None
        unless ``class_weight_power`` asks for them), so a validated checkpoint weighs its loss as training did."""
        self.loss.weight = self.trainer.datamodule.class_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def distillation_loss(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """KL divergence from the teacher's class probabilities to the student's, per pixel, averaged. The teacher
        sees the same augmented batch, renormalised to its mean/std and resized to its own input size; its logits
        are resized back to the student's."""
        teacher, info = self.teacher
        with torch.no_grad():
            mean, std = (torch.tensor(v, device=images.device).view(1, -1, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
            t_mean, t_std = (torch.tensor(v, device=images.device).view(1, -1, 1, 1) for v in (info.mean, info.std))
            x = ((images * std + mean) - t_mean) / t_std
            if x.shape[-1] != info.input_size or x.shape[-2] != info.input_size:
                x = F.interpolate(x, size=(info.input_size, info.input_size), mode="bilinear", align_corners=False)
            target = teacher(x).float()
            target = F.interpolate(target, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        student = F.log_softmax(logits.float(), dim=1)
        return F.kl_div(student, F.log_softmax(target, dim=1), log_target=True, reduction="none").sum(1).mean()

    def segmentation_losses(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(logits, --loss on them, the image-level heads' losses by name: ``presence``, the BCE against
        :func:`parts_present`, and ``viewpoint``, the cross-entropy against :func:`viewpoint_labels`; each only
        while its weight is not 0)."""
        if self.presence_head is None and self.viewpoint_head is None:
            logits = self(images)
            return logits, self.loss(logits, masks), {}
        # smp's own forward (encoder -> decoder -> head), keeping the encoder's features for the image-level heads
        features = self.model.encoder(images)
        logits = self.model.segmentation_head(self.model.decoder(features))
        aux = {}
        if self.presence_head is not None:
            present = self.presence_head(features[-1]).float()
            labels = parts_present(masks, self.taxonomy.num_classes)
            aux["presence"] = F.binary_cross_entropy_with_logits(present, labels)
        if self.viewpoint_head is not None:
            views = self.viewpoint_head(features[-1]).float()
            aux["viewpoint"] = viewpoint_loss(views, viewpoint_labels(masks, self.taxonomy))
        return logits, self.loss(logits, masks), aux

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, masks = batch
        logits, loss, aux = self.segmentation_losses(images, masks)
        for name, value in aux.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=len(images), sync_dist=True)
            loss = loss + getattr(self.config, f"{name}_weight") * value
        if self.teacher:
            distill = self.distillation_loss(images, logits)
            self.log("train/distill", distill, on_step=False, on_epoch=True, batch_size=len(images), sync_dist=True)
            weight = self.config.distill_weight
            loss = (1 - weight) * loss + weight * distill
        # sync_dist: the epoch's train loss is the mean over all ranks (a no-op on one device)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images), sync_dist=True)
        lr = self.optimizers().param_groups[0]["lr"]
        self.log("lr", lr, on_step=False, on_epoch=True, batch_size=len(images), sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, masks = batch
        logits = self(images)
        loss = self.loss(logits, masks)
        self.val_loss_sum += torch.tensor([float(loss) * len(images), len(images)], dtype=torch.float64)
        self.val_confusion.update(masks, logits.argmax(1))

    def on_validation_epoch_end(self) -> None:
        mat, loss_sum = self.val_confusion.mat.to(self.device), self.val_loss_sum.to(self.device)
        if self.trainer.world_size > 1:  # sum the ranks' matrices and losses, never average their means
            torch.distributed.all_reduce(mat)
            torch.distributed.all_reduce(loss_sum)
        self.val_confusion.mat = mat.cpu()
        summary = self.val_confusion.summary(self.taxonomy.names, self.taxonomy.left_right_pairs)
        # already equal on every rank; sync_dist averages identical values (exact) and keeps Lightning quiet
        self.log("val/loss", float(loss_sum[0] / loss_sum[1].clamp(min=1)), sync_dist=True)
        self.log(MONITOR, summary["miou_parts"] or 0.0, prog_bar=True, sync_dist=True)
        self.log("val/miou_all", summary["miou_all"] or 0.0, sync_dist=True)
        self.log("val/pixel_accuracy", summary["pixel_accuracy"] or 0.0, sync_dist=True)
        self.val_confusion.reset()
        self.val_loss_sum.zero_()

    def configure_optimizers(self):
        cfg = self.config
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        else:
            optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # optimiser steps as this rank sees them: with N devices each epoch has 1/N as many
        total = int(self.trainer.estimated_stepping_batches)
        warmup = round(cfg.warmup_epochs * total / max(1, self.trainer.max_epochs))
        schedule = warmup_cosine(total, warmup, cfg.scheduler == "cosine")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class EpochMetrics(Callback):
    """Append one row per epoch to ``metrics.csv`` and ``metrics.json`` in the run folder (rewritten atomically)."""

    KEYS = (
        "lr", "train/loss_epoch", "train/distill", "train/presence", "train/viewpoint", "val/loss", MONITOR,
        "val/miou_all", "val/pixel_accuracy",
    )  # fmt: skip

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        earlier = self.rows()  # a resumed run keeps counting its training time
        self.started = time.time() - (earlier[-1]["seconds"] if earlier else 0.0)

    def rows(self) -> list[dict[str, Any]]:
        path = self.run_dir / "metrics.json"
        return json.loads(path.read_text())["epochs"] if path.is_file() else []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1, "seconds": round(time.time() - self.started, 1)}
        for key in self.KEYS:
            if key in metrics:
                row[key.replace("/", "_").replace("_epoch", "")] = round(float(metrics[key]), 6)
        rows = [r for r in self.rows() if r["epoch"] < row["epoch"]] + [row]
        write_metrics(self.run_dir, rows)


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """``best`` is the epoch with the highest validation part-mIoU, or the last one when nothing was validated."""
    scored = [r for r in rows if "val_miou_parts" in r]
    best = max(scored, key=lambda r: r["val_miou_parts"]) if scored else rows[-1]
    write_atomic(run_dir / "metrics.json", lambda p: p.write_text(json.dumps({"epochs": rows, "best": best}, indent=2)))

    def write_csv(path: Path) -> None:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(run_dir / "metrics.csv", write_csv)


def read_best(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text())["best"] if path.is_file() else {}


def new_run_dir(out: str, name: str) -> Path:
    """``runs/<name>``, or ``runs/<name>-2``, ``-3``... so that no earlier run is overwritten."""
    base = Path(out) / name
    candidate, k = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        k += 1
        candidate = base.with_name(f"{name}-{k}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def resolve_resume(resume: str) -> tuple[Path, Path]:
    """(run folder, checkpoint) from ``--resume RUN_DIR`` or ``--resume path/to/last.ckpt``."""
    path = Path(resume)
    run_dir = path.parent.parent if path.suffix == ".ckpt" else path
    ckpt = path if path.suffix == ".ckpt" else path / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise CarpartsError(f"{ckpt}: no checkpoint to resume from")
    if not (run_dir / "config.yaml").is_file():
        raise CarpartsError(f"{run_dir / 'config.yaml'}: run config not found")
    return run_dir, ckpt


def resume_config(resume: str, epochs: int | None = None) -> TrainConfig:
    """The saved config of the run to resume, optionally with more epochs."""
    run_dir, _ = resolve_resume(resume)
    return load_config(path=run_dir / "config.yaml", overrides={"epochs": epochs})


class SeededSampler(torch.utils.data.Sampler):
    """This rank's share of the training images in a fresh order each epoch, each paired with the seed of its
    augmentation (see :class:`carparts.data.SegmentationDataset`).

    Order and seeds follow from (seed, epoch, rank) alone, never from which data-loading process reads an image,
    so one config gives one run with any number of workers, and a resumed run goes on as the uninterrupted one
    would have. Lightning calls :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self, dataset: Sized, seed: int, rank: int = 0, world: int = 1, repeats: Sequence[float] | None = None
    ):
        self.shard = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=seed)
        self.seed = seed
        # repeat-factor sampling (carparts.data.repeat_factors): image i is seen repeats[i] times an epoch on
        # average, in a fixed number of draws per epoch (the schedule and the progress bar count on it)
        self.repeats = None if repeats is None else np.asarray(repeats, dtype=np.float64)
        if self.repeats is not None and len(self.repeats) != len(dataset):
            raise ValueError(f"{len(self.repeats)} repeat factors for {len(dataset)} images")
        self.draws = len(dataset) if self.repeats is None else int(math.floor(self.repeats.sum() + 0.5))

    def set_epoch(self, epoch: int) -> None:
        self.shard.set_epoch(epoch)

    def __len__(self) -> int:
        if self.repeats is None:
            return len(self.shard)
        return math.ceil(self.draws / self.shard.num_replicas)

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the epoch: with repeat factors, every image ``floor(r)`` times and the draws left
        over given to images drawn in proportion to the fractions of their ``r``; then shuffled, padded with the
        first ones to a multiple of the ranks and dealt out to them."""
        if self.repeats is None:
            return list(self.shard)
        rng = np.random.default_rng([self.seed % 2**64, self.shard.epoch])
        counts = np.floor(self.repeats).astype(np.int64)
        fractions, extra = self.repeats - counts, self.draws - int(counts.sum())
        if extra > 0:
            counts[rng.choice(len(counts), size=extra, replace=False, p=fractions / fractions.sum())] += 1
        order = rng.permutation(np.repeat(np.arange(len(counts)), counts)).tolist()
        world = self.shard.num_replicas
        order += order[: len(self) * world - len(order)]
        return order[self.shard.rank :: world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.epoch_indices()
        entropy = [self.seed % 2**64, self.shard.epoch, self.shard.rank]
        seeds = np.random.default_rng(entropy).integers(2**63, size=len(indices))
        return zip(indices, seeds.tolist(), strict=True)


class SegmentationData(L.LightningDataModule):
    """The split's train and validation loaders. On several devices each rank trains on its own shard of the
    training images, and validation reads every image exactly once (no padding with repeats), so the confusion
    matrices summed over ranks equal one single-process evaluation."""

    def __init__(self, config: TrainConfig, coco: CocoDataset, train_idx: list[int], val_idx: list[int]):
        super().__init__()
        flip = coco.taxonomy.flip_permutation
        self.config = config
        train_tf = train_transform(config.img_size, flip, config.augment, resize=config.resize, blur=config.blur)
        self.train_set = SegmentationDataset(coco, train_idx, train_tf)
        self.repeats = repeat_factors(coco, train_idx, config.repeat_threshold) if config.repeat_threshold else None
        power = config.class_weight_power
        self.class_weights = torch.tensor(class_weights(coco, train_idx, power)) if power else None
        self.val_set = SegmentationDataset(coco, val_idx, eval_transform(config.img_size, resize=config.resize))

    def _loader(self, dataset: SegmentationDataset, train: bool) -> torch.utils.data.DataLoader:
        cfg = self.config
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler: torch.utils.data.Sampler | None = None
        if train:
            sampler = SeededSampler(dataset, cfg.seed, rank, world, self.repeats)
        elif world > 1:
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        # the loader's own generator: drawing its workers' seeds leaves the global one (dropout) alone
        return torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=train and len(sampler) > cfg.batch_size,
            num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
            generator=torch.Generator().manual_seed(cfg.seed % 2**63),
        )  # fmt: skip

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.val_set, train=False)


def global_rank_from_env() -> int:
    """This process's rank as an outside launcher (torchrun, SLURM) or Lightning's own sets it; 0 otherwise."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


RUN_DIR_ENV = "CARPARTS_RUN_DIR"  # the run folder, handed by rank 0 to the processes Lightning launches


def run_dir_for_rank(config: TrainConfig) -> Path:
    """Rank 0 makes a fresh ``runs/<name>``; every other rank writes into the same folder, never its own."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if global_rank_from_env() > 0 or "WORLD_SIZE" in os.environ or "SLURM_NTASKS" in os.environ:
        # every process was started by an outside launcher: they agree on the name, so it must be fresh
        run_dir = Path(config.out) / config.name
        if global_rank_from_env() == 0 and (run_dir / "checkpoints").is_dir():
            raise CarpartsError(f"{run_dir}: already holds a run; give the multi-node run a new --name")
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    return new_run_dir(config.out, config.name)


def run_split(config: TrainConfig, coco: CocoDataset) -> tuple[list[int], list[int]]:
    """(train, val) image indices of a run: the first ``limit_images`` images, split by ``split_seed``; each folder
    of several on its own (:meth:`CocoDataset.recipe_split`)."""
    train_idx, val_idx = coco.recipe_split(config.to_dict())
    n = len(train_idx) + len(val_idx)
    if not train_idx or (not val_idx and config.val_fraction > 0):
        raise CarpartsError(
            f"{config.data}: {n} image(s) with val_fraction {config.val_fraction} leave {len(train_idx)} to train on "
            f"and {len(val_idx)} to validate on; both need at least one (or --val-fraction 0 to train on all)"
        )
    return train_idx, val_idx


def loggers(run_dir: Path) -> list:
    """Lightning's CSV logs always, TensorBoard's too when it is installed."""
    found = [CSVLogger(run_dir, name="logs")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        found.append(TensorBoardLogger(run_dir, name="tensorboard"))
    return found


def accelerator_settings(config: TrainConfig) -> dict[str, Any]:
    """The Trainer's hardware arguments; a strategy Lightning does not know is refused before any file is written."""
    known = ["auto", *StrategyRegistry.available_strategies()]
    if config.strategy not in known:
        raise CarpartsError(f"unknown strategy '{config.strategy}'; choose from {', '.join(known[:4])}, fsdp, ...")
    on_gpu = config.accelerator in ("gpu", "cuda") or (config.accelerator == "auto" and torch.cuda.is_available())
    precision = config.precision if config.precision != "auto" else ("16-mixed" if on_gpu else "32-true")
    devices: Any = config.devices if config.devices == "auto" else int(config.devices)
    return {
        "accelerator": config.accelerator, "devices": devices, "num_nodes": config.num_nodes,
        "strategy": config.strategy, "precision": precision,
    }  # fmt: skip


# Lightning's messages that no user can act on: its own use of a deprecated torch API, and an advert
NOISY_WARNINGS = (r".*LeafSpec.*is deprecated",)
ADVERTS = ("Tip: ",)


@contextmanager
def lightning_output(quiet: bool) -> Iterator[None]:
    """Lightning's terminal output while training: never the warnings in :data:`NOISY_WARNINGS` nor its
    :data:`ADVERTS`; with ``quiet``, none of its info lines or warnings either, only its errors. Restored on exit."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    # Lightning logs its info lines through these two
    rank_zero = [logging.getLogger(f"{logger.name}.utilities.rank_zero") for logger in loggers]

    def no_advert(record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in ADVERTS)

    with warnings.catch_warnings():
        for pattern in NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        if quiet:
            warnings.filterwarnings("ignore", module=r"lightning\.")
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
        for logger in rank_zero:
            logger.addFilter(no_advert)
        for logger in loggers if quiet else []:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            for logger in rank_zero:
                logger.removeFilter(no_advert)


def train(config: TrainConfig, resume: str | None = None, progress: bool = True) -> Path | None:
    """Train a model; return its run folder holding checkpoints, metrics and the exported model.

    With ``resume`` (a run folder or checkpoint), training continues in that folder from its last
    checkpoint; ``config`` should then be the run's own (see :func:`resume_config`).

    On several devices or nodes (``config.devices``, ``num_nodes``, ``strategy="ddp"``) Lightning runs one
    process per device; ``batch_size`` is per device, so the global batch is ``batch_size x devices x
    num_nodes``, and ``lr`` is used as given (scale it yourself if you change the global batch). Only rank 0
    writes files and exports the model; the other ranks return None.

    The run folder is made once the data, the split and the model are known to be good, and removed again if the
    run stops before its first epoch ends, so a failed start leaves nothing behind. Ctrl-C raises
    :class:`KeyboardInterrupt` whose message says how to resume. ``progress=False`` also keeps Lightning's info
    lines and warnings off the terminal.
    """
    hardware = accelerator_settings(config)
    run_dir, ckpt = resolve_resume(resume) if resume is not None else (None, None)
    if run_dir is None:
        check_output_folder(Path(config.out))
    with lightning_output(quiet=not progress):
        L.seed_everything(config.seed, workers=True, verbose=False)
        coco = load_coco(config.data)
        train_idx, val_idx = run_split(config, coco)
        data = SegmentationData(config, coco, train_idx, val_idx)
        module = SegmentationModule(config.to_dict(), coco.taxonomy.to_dict())  # a bad arch or encoder fails here
        if progress and data.class_weights is not None:
            pairs = zip(coco.taxonomy.names, data.class_weights.tolist(), strict=True)
            listed = ", ".join(f"{name} {weight:.2f}" for name, weight in pairs)
            print(f"cross-entropy class weights: {listed}")
        if config.init_from and ckpt is None:  # a resumed run's weights come from its checkpoint
            start = load_start_weights(module.model, config.init_from, config.arch, config.encoder, coco.taxonomy)
            module.sources["init_from"] = start
            if progress:
                print(f"fine-tuning {start} ({config.init_from})")
        if config.distill_from:  # a resumed run needs its teacher too
            module.set_teacher(*load_teacher(config.distill_from, coco.taxonomy))
            module.sources["distill_from"] = module.teacher[1].model_id
            if progress:
                print(f"distilling from {module.teacher[1].model_id} ({config.distill_from})")
        made_here = run_dir is None and RUN_DIR_ENV not in os.environ and global_rank_from_env() == 0
        run_dir = run_dir or run_dir_for_rank(config)
        try:
            return fit(config, run_dir, ckpt, data, module, hardware, progress)
        except BaseException as stop:
            started = (run_dir / "checkpoints" / "last.ckpt").is_file()
            if made_here and not started:  # nothing to resume or use
                shutil.rmtree(run_dir, ignore_errors=True)
            if isinstance(stop, KeyboardInterrupt):
                hint = f"continue with: carparts train --resume {run_dir}" if started else "no epoch had finished"
                raise KeyboardInterrupt(hint) from None
            raise


def fit(
    config: TrainConfig, run_dir: Path, ckpt: Path | None, data: SegmentationData, module: SegmentationModule,
    hardware: dict[str, Any], progress: bool,
) -> Path | None:  # fmt: skip
    """Record the run's config and split in ``run_dir``, fit, and export the best weights; None on ranks other
    than 0. Ctrl-C raises :class:`KeyboardInterrupt` once Lightning has stopped.

    ``split.json`` lists the file names of the train and val images: bare for one folder, ``<folder>/<file_name>``
    for several (see :func:`carparts.data.join_folders`)."""
    coco, train_idx, val_idx = data.train_set.coco, data.train_set.indices, data.val_set.indices
    if global_rank_from_env() == 0:
        config.save(run_dir / "config.yaml")
        (run_dir / SPLIT_FILE).write_text(json.dumps({
            "train": [coco.images[i]["file_name"] for i in train_idx],
            "val": [coco.images[i]["file_name"] for i in val_idx],
        }, indent=1))  # fmt: skip
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    validated = bool(val_idx)  # --val-fraction 0 trains on every image: no validation, the last epoch is kept
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=MONITOR, mode="max")
    # every epoch, so --resume loses nothing: Lightning's own save_last only writes when `best` improves
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1)
    callbacks: list[Callback] = [best] if validated else []
    callbacks += [last, EpochMetrics(run_dir)] + ([TQDMProgressBar()] if progress else [])
    if config.ema_decay:
        # Lightning's EMA: validation, checkpoints' state_dict (hence the exported model) hold the averaged
        # weights; the raw ones travel in the checkpoint so a resumed run continues both
        callbacks.append(EMAWeightAveraging(decay=config.ema_decay))
    trainer = L.Trainer(
        max_epochs=config.epochs,
        default_root_dir=run_dir,
        logger=loggers(run_dir),
        callbacks=callbacks,
        gradient_clip_val=config.grad_clip or None,
        num_sanity_val_steps=0,
        limit_val_batches=None if validated else 0,
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=False,
        use_distributed_sampler=False,  # SegmentationData shards by rank itself, validation without repeats
        **hardware,
    )
    owns_env = RUN_DIR_ENV not in os.environ
    os.environ[RUN_DIR_ENV] = str(run_dir)  # processes that Lightning launches for other devices inherit it
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    except SystemExit:
        if not trainer.interrupted:
            raise
        # Lightning stops gracefully on Ctrl-C, then exits; it also leaves Ctrl-C ignored
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt from None
    finally:
        if owns_env:
            os.environ.pop(RUN_DIR_ENV, None)
    if not trainer.is_global_zero:
        return None
    export_best(run_dir, (validated and best.best_model_path) or last.best_model_path, config, coco.taxonomy)
    return run_dir


def validate_checkpoint(run_dir: str | Path, which: str = "best") -> dict[str, float]:
    """Score a run's checkpoint on its validation split at the training size, in this one process.

    The same figures training logs per epoch (``val/miou_parts``...), so a multi-device run can be checked.
    """
    run_dir = Path(run_dir)
    config = load_config(path=run_dir / "config.yaml")
    coco = load_coco(config.data)
    train_idx, val_idx = run_split(config, coco)
    module = SegmentationModule.load_from_checkpoint(
        run_dir / "checkpoints" / f"{which}.ckpt", map_location="cpu", weights_only=False,
        config={**config.to_dict(), "encoder_weights": "none"}, taxonomy=coco.taxonomy.to_dict(),
    )  # fmt: skip
    with lightning_output(quiet=True):
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False)  # fmt: skip
        data = SegmentationData(config, coco, train_idx, val_idx)
        (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    return metrics


def export_best(run_dir: Path, ckpt_path: str, config: TrainConfig, taxonomy: Taxonomy) -> None:
    """Export the best checkpoint's weights with ``model.json``, fit their calibration temperature on the
    validation split (:func:`carparts.calibration.calibrate`), then evaluate them there at native resolution, so
    ``eval_val/metrics.json`` has the calibration error before and after, and record the figures in ``model.json``."""
    from carparts.calibration import calibrate  # evaluation and calibration run the inference path, as users will
    from carparts.evaluate import evaluate, headline

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    state, sources = checkpoint["state_dict"], checkpoint.get("sources")
    model = build_model(config.arch, config.encoder, taxonomy.num_classes, encoder_weights="none")
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    info = ModelInfo(
        arch=config.arch, encoder=config.encoder, taxonomy=taxonomy, input_size=config.img_size,
        resize=config.resize, name=config.name, recipe=config.to_dict() | ({"sources": sources} if sources else {}),
    )  # fmt: skip
    save_model(model, info, run_dir)
    if not config.val_fraction:  # trained on every image: there is no held-out split to score
        info.metrics = {"last_epoch": read_best(run_dir)}
        save_model(model, info, run_dir)
        return
    calibration = calibrate(run_dir, config.data, split="val", progress=False)  # the temperature, into model.json
    info.temperature = calibration["temperature"]
    summary = evaluate(run_dir, config.data, split="val", out=run_dir / "eval_val", progress=False)
    info.metrics = {
        "val_native": headline(summary), "best_epoch_val_at_train_size": read_best(run_dir), "calibration": calibration,
    }  # fmt: skip
    save_model(model, info, run_dir)
