"""Training GT-Loc: losses over cached backbone features (frozen) or pixels (trainable backbone), AdamW with warmup
and cosine decay, validation each epoch, checkpoints each epoch, exact resume, and torch.distributed (torchrun).

Distributed training (torchrun) wraps the part of the model that trains, with the weighted loss as its forward
(`Objective`), in torch's DistributedDataParallel: gradients are averaged over the ranks in buckets while
backward still runs, so every rank holds the same weights; DDP also broadcasts rank 0's buffers (the adapter's
batch-norm statistics) before each step. Each epoch the ranks compare a checksum of their parameters and stop
with an error if they differ. Contrastive negatives are per rank (each rank's batch and queue), as in GeoCLIP's
single-GPU training. Checkpoints and training states hold the unwrapped model: the same keys as a 1-process run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from gtloc_engine.errors import BadPhotoError, GtlocError
from gtloc_engine.evaluation.runner import evaluate_embeddings
from gtloc_engine.inference.predictor import Predictor
from gtloc_engine.io.photos import load_photo_rgb
from gtloc_engine.io.atomic import atomic_write
from gtloc_engine.model.checkpoint import load_checkpoint, save_checkpoint
from gtloc_engine.model.config import ModelConfig
from gtloc_engine.model.gtloc import GTLoc
from gtloc_engine.records import Record, read_manifest, scan_photo_folder, split_records
from gtloc_engine.training.feature_cache import FeatureCache
from gtloc_engine.training.losses import (
    TML_TARGETS, CoordinateQueue, infonce, temporal_metric_loss, tml_targets,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
HISTORY_FILE = "history.jsonl"
MAX_GALLERY = 100_000


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved next to the checkpoint as train_config.json."""

    out_dir: str
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig as a dict
    manifest: str | None = None
    photo_dir: str | None = None
    epochs: int = 10
    batch_size: int = 256  # global: split over ranks
    lr: float = 3e-4
    backbone_lr: float = 1e-5
    weight_decay: float = 1e-6
    warmup_steps: int = 50
    schedule: str = "cosine"  # or 'constant'
    seed: int = 0
    loc_weight: float = 1.0  # 0 trains time only (the paper's TimeLoc)
    time_weight: float = 1.0  # 0 trains location only (GeoCLIP-like)
    loc_queue: int = 4096
    time_queue: int = 4096
    gps_noise_deg: float = 0.01  # GeoCLIP's Gaussian GPS jitter
    tml_target: str = "softmax"
    tau_delta: float = 0.2  # torus-distance temperature of the softmax TML target (0.05 learned no time: bench)
    # Composed terms of the fused heads (not published; off by default), each over photos with a place and a time:
    # ig2t: TML of normalize(image + place) against times; it2g: InfoNCE of normalize(image + time) against places;
    # gt2i: InfoNCE of normalize(place + time) against the batch's images. composed_weight scales all three;
    # gps_time_weight the place -> time TML term (where photos are taken when).
    composed_weight: float = 0.0
    gps_time_weight: float = 0.0
    val_fraction: float = 0.1
    augment: bool = True  # random resized crop + flip when the backbone trains
    cache_dir: str | None = None
    workers: int = 2
    resume: bool = True
    stop_after_epochs: int | None = None  # end this invocation early (job time limits); a re-run resumes
    progress: bool = True

    def validate(self) -> "TrainConfig":
        if (self.manifest is None) == (self.photo_dir is None):
            raise GtlocError("training needs exactly one of a manifest CSV or a photo folder")
        if self.epochs < 1 or self.batch_size < 2:
            raise GtlocError(f"epochs ({self.epochs}) must be >= 1 and batch_size ({self.batch_size}) >= 2")
        if self.tml_target not in TML_TARGETS:
            raise GtlocError(f"tml_target {self.tml_target!r} must be one of {TML_TARGETS}")
        if self.schedule not in ("cosine", "constant"):
            raise GtlocError(f"schedule {self.schedule!r} must be 'cosine' or 'constant'")
        if self.loc_weight <= 0 and self.time_weight <= 0:
            raise GtlocError("loc_weight and time_weight are both 0: nothing to train")
        if self.composed_weight < 0 or self.gps_time_weight < 0:
            raise GtlocError(f"composed_weight ({self.composed_weight}) and gps_time_weight ({self.gps_time_weight}) "
                             "must be >= 0")
        ModelConfig.from_dict(self.model)
        return self


class Dist:
    """This process's place in a torch.distributed job (a 1-process job when not launched by torchrun)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        if self.world > 1 and not torch.distributed.is_initialized():
            # The backend follows where the trained parameters live: NCCL reduces CUDA tensors only, gloo CPU ones.
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def wrap(self, module: nn.Module, *, find_unused_parameters: bool) -> nn.Module:
        """The module in DistributedDataParallel (gradients averaged over ranks during backward); itself alone."""
        if self.world == 1:
            return module
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       find_unused_parameters=find_unused_parameters)

    def check_in_sync(self, model: nn.Module) -> str:
        digest = parameter_checksum(model)
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(gathered, digest)
            if len(set(gathered)) != 1:
                raise GtlocError(f"distributed ranks are out of sync: parameter checksums {gathered}")
        return digest

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def parameter_checksum(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def train_transform(model: GTLoc):
    from torchvision import transforms

    normalize = [t for t in model.backbone.preprocess.transforms if isinstance(t, transforms.Normalize)][0]
    size = model.backbone.image_size
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.6, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalize,
    ])


class Objective(nn.Module):
    """The part of a GTLoc that trains, with the weighted training loss of one batch as its forward: the module
    DistributedDataParallel wraps, so that the losses' forward, and so backward, go through DDP.

    Registered, and so synchronised by DDP: the model's children that train, i.e. all but a frozen backbone (its
    features come from the cache). The whole model is held unregistered, for its embedding methods; registering it
    would hand DDP the frozen backbone too, to broadcast at start-up (and its buffers before every step) for nothing.
    """

    def __init__(self, model: GTLoc, cfg: TrainConfig):
        super().__init__()
        self.trained = nn.ModuleDict({name: child for name, child in model.named_children() if self.trains(name, model)})
        self._model = (model,)  # a tuple: not a submodule
        self.cfg = cfg

    @staticmethod
    def trains(name: str, model: GTLoc) -> bool:
        """Whether the model's child `name` takes part in this objective: all but a frozen backbone."""
        return name != "backbone" or model.cfg.backbone.trainable

    @property
    def model(self) -> GTLoc:
        return self._model[0]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features: cached ones pass through (frozen backbone); pixels go through the training backbone."""
        return self.model.image_features(images) if self.model.cfg.backbone.trainable else images

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed_features(self.image_features(images))

    def forward(self, images: torch.Tensor, timed: torch.Tensor, places: torch.Tensor | None = None,
                times: torch.Tensor | None = None, time_targets: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """(weighted total loss, each term's value) for one batch.

        images: backbone features or pixels of the batch; timed: (batch,) which photos have a capture time;
        places: (batch + loc queue, 2) lat/lon, the batch's (jittered) places first (None: no place terms);
        times: (timed photos + time queue, 2) torus, the timed photos' times first (None: no time terms);
        time_targets: the TML soft targets of the timed photos over `times`.
        """
        cfg, model = self.cfg, self.model
        scales = model.logit_scales
        image_emb = self.embed_images(images)
        total = torch.zeros(())
        parts: dict[str, float] = {}

        def add(name: str, weight: float, loss: torch.Tensor) -> None:
            nonlocal total
            total = total + weight * loss
            parts[name] = loss.item()

        n_batch, n_timed = len(timed), int(timed.sum())
        loc_emb = model.embed_locations(places) if places is not None else None  # [batch ; queue]
        if cfg.loc_weight > 0:
            add("loss_loc", cfg.loc_weight, infonce(image_emb, loc_emb, scales["img_gps"]))
        time_emb = model.embed_times(times) if times is not None else None  # [timed batch ; queue]
        if cfg.time_weight > 0 and time_emb is not None:
            add("loss_time", cfg.time_weight,
                temporal_metric_loss(image_emb[timed], time_emb, scales["img_time"], time_targets))
        composed = cfg.composed_weight > 0 or cfg.gps_time_weight > 0
        if composed and loc_emb is not None and time_emb is not None and n_timed >= 2:
            img_t, place_t = image_emb[timed], loc_emb[:n_batch][timed]
            # Reorder places so the timed photos come first: InfoNCE's target i is then row i of [timed ; rest].
            untimed = loc_emb[:n_batch][~timed]
            places_emb = torch.cat((place_t, untimed, loc_emb[n_batch:]))
            q = time_targets
            if cfg.composed_weight > 0:
                w = cfg.composed_weight
                add("loss_ig2t", w, temporal_metric_loss(model.fuse(img_t, place_t), time_emb, scales["ig2t"], q))
                add("loss_it2g", w, infonce(model.fuse(img_t, time_emb[:n_timed]), places_emb, scales["it2g"]))
                add("loss_gt2i", w, infonce(model.fuse(place_t, time_emb[:n_timed]), img_t, scales["gt2i"]))
            if cfg.gps_time_weight > 0:
                add("loss_gps_time", cfg.gps_time_weight, temporal_metric_loss(place_t, time_emb, scales["gps_time"], q))
        parts["loss"] = total.item()
        return total, parts


class Trainer:
    """One training run in `out_dir`; `run()` trains (resuming if a state is there) and returns the history."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg.validate()
        self.out = Path(cfg.out_dir)
        torch.manual_seed(cfg.seed)
        records = read_manifest(cfg.manifest) if cfg.manifest else scan_photo_folder(cfg.photo_dir)
        self.train_records, self.val_records = split_records(records, cfg.val_fraction, cfg.seed)
        if len(self.train_records) < 2:
            raise GtlocError(f"only {len(self.train_records)} training photos; need at least 2")
        model_cfg = ModelConfig.from_dict(cfg.model)
        self.model = GTLoc(model_cfg, seed=cfg.seed)
        self.dist = Dist(next(self.model.parameters()).device)
        self.objective = Objective(self.model, cfg)
        self.frozen = not model_cfg.backbone.trainable
        timed = any(r.torus is not None for r in self.train_records)
        self.model.heads_trained = {
            "location": cfg.loc_weight > 0,
            "time": cfg.time_weight > 0 and timed,
            **dict.fromkeys(("ig2t", "it2g", "gt2i"), cfg.composed_weight > 0 and timed),
            "gps_time": cfg.gps_time_weight > 0 and timed,
        }
        self.model.gallery_latlon_deg = self._gallery(self.train_records)
        self.optimizer = self._build_optimizer()
        self.loc_queue = CoordinateQueue(cfg.loc_queue, 2)
        self.time_queue = CoordinateQueue(cfg.time_queue, 2)
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the heads (lr) and, when it trains, the backbone (backbone_lr)."""
        params = [{"params": self.model.head_parameters(), "lr": self.cfg.lr}]
        if not self.frozen:
            params.append({"params": list(self.model.backbone.parameters()), "lr": self.cfg.backbone_lr})
        return torch.optim.AdamW(params, weight_decay=self.cfg.weight_decay)

    def _gallery(self, records: list[Record]) -> np.ndarray:
        places = np.unique(np.array([(r.lat_deg, r.lon_deg) for r in records], dtype=np.float64), axis=0)
        if len(places) > MAX_GALLERY:
            places = places[np.random.default_rng(self.cfg.seed).choice(len(places), MAX_GALLERY, replace=False)]
        return places

    # -- inputs -------------------------------------------------------------------------------------------------

    def _prepare_inputs(self) -> None:
        """Cached features (frozen backbone) or photo datasets (trainable); drop photos that cannot be read."""
        if not self.frozen:  # photos are decoded (and augmented) at every step, on threads
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.cfg.workers))
            self._augment = train_transform(self.model)
        if self.frozen:
            cache = FeatureCache(self.model.backbone, self.cfg.cache_dir)
            records = self.train_records + self.val_records
            if self.dist.main:  # one process computes the cache; the others wait and map it
                feats, failures = self._features(cache, records)
            self.dist.barrier()
            if not self.dist.main:
                feats, failures = self._features(cache, records, quiet=True)
            valid = feats.valid
        else:  # check every photo once up front, so a bad one is reported and dropped, not fatal mid-epoch
            feats, failures = None, []
            valid = np.ones(len(self.train_records) + len(self.val_records), dtype=bool)
            for i, r in enumerate(self.train_records + self.val_records):
                try:
                    load_photo_rgb(r.path, draft_size=(8, 8))
                except BadPhotoError as exc:
                    valid[i] = False
                    failures.append((i, str(exc)))
        for _, reason in failures:
            if self.dist.main:
                log.warning("skipped: %s", reason)
        n_train = len(self.train_records)
        self.features = feats
        self.train_idx = np.flatnonzero(valid[:n_train])
        self.val_idx = np.flatnonzero(valid[n_train:]) + n_train
        self.all_records = self.train_records + self.val_records
        self.latlon = torch.tensor([(r.lat_deg, r.lon_deg) for r in self.all_records], dtype=torch.float32)
        self.torus = torch.tensor([r.torus or (math.nan, math.nan) for r in self.all_records], dtype=torch.float32)
        if len(self.train_idx) < 2:
            raise GtlocError("fewer than 2 readable training photos; see the warnings above")

    def _features(self, cache: FeatureCache, records: list[Record], quiet: bool = False):
        return cache.features([r.path for r in records], workers=self.cfg.workers,
                              progress=self.cfg.progress and not quiet)

    def _image_inputs(self, idx: np.ndarray, train: bool) -> torch.Tensor:
        """Cached backbone features (frozen backbone) or decoded (and, in training, augmented) pixels."""
        if self.frozen:
            return self.features.get(idx)
        transform = self._augment if (train and self.cfg.augment) else self.model.backbone.preprocess
        size = self.model.backbone.image_size
        decode = lambda i: transform(load_photo_rgb(self.all_records[i].path, draft_size=(size, size)))  # noqa: E731
        return torch.stack(list(self._pool.map(decode, idx)))

    # -- optimisation -------------------------------------------------------------------------------------------

    def _lr_factor(self, step: int, total: int) -> float:
        if step < self.cfg.warmup_steps:
            return (step + 1) / self.cfg.warmup_steps
        if self.cfg.schedule == "constant":
            return 1.0
        progress = (step - self.cfg.warmup_steps) / max(1, total - self.cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def _batch(self, idx: np.ndarray) -> dict[str, torch.Tensor | None]:
        """The Objective's inputs for one batch: images, GPS jitter, queue contents and TML targets."""
        cfg = self.cfg
        images = self._image_inputs(idx, train=True)
        timed = ~torch.isnan(self.torus[idx, 0])
        any_timed = bool(timed.any())
        composed = any_timed and (cfg.composed_weight > 0 or cfg.gps_time_weight > 0)
        places = times = time_targets = None
        if cfg.loc_weight > 0 or composed:
            gps = self.latlon[idx]
            if cfg.gps_noise_deg > 0:
                gps = gps + torch.randn_like(gps) * cfg.gps_noise_deg
            places = torch.cat((gps, self.loc_queue.values()))
        if (cfg.time_weight > 0 or composed) and any_timed:
            batch_times = self.torus[idx][timed]
            times = torch.cat((batch_times, self.time_queue.values()))
            time_targets = tml_targets(batch_times, times, mode=cfg.tml_target, tau_delta=cfg.tau_delta)
        return {"images": images, "timed": timed, "places": places, "times": times, "time_targets": time_targets}

    def _push_queues(self, idx: np.ndarray, batch: dict[str, torch.Tensor | None]) -> None:
        """The batch's places and times join the queues after its step (they were its positives, not negatives)."""
        if batch["places"] is not None:
            self.loc_queue.push(self.latlon[idx])
        if batch["times"] is not None:
            self.time_queue.push(self.torus[idx][batch["timed"]])

    def _every_parameter_trains_every_step(self) -> bool:
        """Whether each step's loss reaches every trained parameter: all four loss terms on, every training photo timed
        and the backbone frozen. Otherwise DDP must find the unused ones at each step: the time encoder of a
        location-only run, the location encoder of a time-only one, the logit scales of heads without a loss term,
        the time path in an untimed batch, a training backbone's text tower."""
        cfg = self.cfg
        weights = (cfg.loc_weight, cfg.time_weight, cfg.composed_weight, cfg.gps_time_weight)
        return (self.frozen and all(w > 0 for w in weights)
                and not bool(torch.isnan(self.torus[self.train_idx, 0]).any()))

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches: a seeded permutation per epoch, split across ranks, last partial batch dropped."""
        per_rank = max(2, self.cfg.batch_size // self.dist.world)
        order = self.train_idx[np.random.default_rng(self.cfg.seed + 1000 * epoch).permutation(len(self.train_idx))]
        n_batches = max(1, len(order) // (per_rank * self.dist.world))
        mine = order[self.dist.rank::self.dist.world]
        batches = [mine[b * per_rank:(b + 1) * per_rank] for b in range(n_batches)]
        return [b for b in batches if len(b) >= 2]

    # -- validation ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """The evaluation suite on the validation photos (see evaluation.runner), prefixed 'val_'."""
        if len(self.val_idx) == 0:
            return {}
        self.model.eval()
        emb = torch.cat([self.objective.embed_images(self._image_inputs(self.val_idx[i:i + 512], train=False))
                         for i in range(0, len(self.val_idx), 512)]).numpy()
        # cache=False: the weights change every epoch, so disk-cached constants would never be read again
        metrics = evaluate_embeddings(Predictor(self.model, cache=False), emb,
                                      [self.all_records[i] for i in self.val_idx])
        return {f"val_{k}": v for k, v in metrics.items()}

    # -- state --------------------------------------------------------------------------------------------------

    def _state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        opt = self.optimizer.state_dict()
        tensors = {f"opt.{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()}
        for name, queue in (("loc_queue", self.loc_queue), ("time_queue", self.time_queue)):
            tensors.update({f"{name}.{k}": v for k, v in queue.state().items()})
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"epoch": self.epoch, "step": self.step, "param_groups": opt["param_groups"],
                "history": self.history, "train_config": dataclasses.asdict(self.cfg)}
        return {k: v.contiguous() for k, v in tensors.items()}, meta

    def _save(self) -> None:
        from safetensors.torch import save_file

        info = {"epoch": self.epoch, "step": self.step, "train_photos": len(self.train_idx),
                "val_photos": len(self.val_idx), "metrics": self.history[-1] if self.history else {}}
        save_checkpoint(self.out / MODEL_FILE, self.model, info)
        tensors, meta = self._state_tensors()
        atomic_write(self.out / STATE_FILE,
                     lambda tmp: save_file(tensors, str(tmp), metadata={"gtloc_train_state": json.dumps(meta)}))

    def _maybe_resume(self) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        state_path, model_path = self.out / STATE_FILE, self.out / MODEL_FILE
        if not (self.cfg.resume and state_path.is_file() and model_path.is_file()):
            return
        loaded = load_checkpoint(model_path, load_backbone=False, device="cpu")  # copied into self.model below
        keep = self.model.backbone_in_checkpoint
        self.model.load_state_dict({k: v for k, v in loaded.state_dict().items()
                                    if keep or not k.startswith("backbone.")}, strict=False)
        try:
            with safe_open(str(state_path), framework="pt") as f:
                meta = json.loads(f.metadata()["gtloc_train_state"])
            tensors = load_file(str(state_path))
        except Exception as exc:
            raise GtlocError(f"training state {state_path} is unreadable ({type(exc).__name__}); delete it to "
                             "start over") from None
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, i, name = key.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = value
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        for name, queue in (("loc_queue", self.loc_queue), ("time_queue", self.time_queue)):
            queue.load_state({k: tensors[f"{name}.{k}"] for k in ("buffer", "count")})
        torch.set_rng_state(tensors["rng.torch"])
        self.epoch, self.step, self.history = meta["epoch"], meta["step"], meta["history"]
        if self.dist.main:
            log.info("resumed from %s at epoch %d (step %d)", state_path, self.epoch, self.step)

    # -- main loop ----------------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        try:
            return self._run()
        finally:
            self.dist.close()

    def _run(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out / "train_config.json",
                         lambda tmp: tmp.write_text(json.dumps(dataclasses.asdict(cfg), indent=2)))
        self._prepare_inputs()
        self._maybe_resume()
        steps_per_epoch = len(self._epoch_batches(0))
        total_steps = steps_per_epoch * cfg.epochs
        objective = self.dist.wrap(self.objective, find_unused_parameters=not self._every_parameter_trains_every_step())
        last_epoch = (cfg.epochs if cfg.stop_after_epochs is None
                      else min(cfg.epochs, self.epoch + cfg.stop_after_epochs))
        while self.epoch < last_epoch:
            self.model.train()
            batches = self._epoch_batches(self.epoch)
            bar = tqdm(batches, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="batch",
                       disable=not (cfg.progress and self.dist.main))
            sums: dict[str, float] = {}
            t0, seen = time.perf_counter(), 0
            for idx in bar:
                for group, base in zip(self.optimizer.param_groups, (cfg.lr, cfg.backbone_lr)):
                    group["lr"] = base * self._lr_factor(self.step, total_steps)
                batch = self._batch(idx)
                loss, parts = objective(**batch)
                self._push_queues(idx, batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # under DDP: gradients averaged over ranks, bucket by bucket, while it runs
                self.optimizer.step()
                self.step += 1
                seen += len(idx) * self.dist.world
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{parts['loss']:.3f}", photos_s=f"{seen / (time.perf_counter() - t0):.0f}")
            self.epoch += 1
            checksum = self.dist.check_in_sync(self.model)
            record = {"epoch": self.epoch, "step": self.step,
                      **{k: v / max(1, len(batches)) for k, v in sums.items()},
                      "photos_per_s": seen / max(1e-9, time.perf_counter() - t0)}
            if self.dist.main:
                record.update(self.validate())
                self.history.append(record)
                self._save()
                atomic_write(self.out / HISTORY_FILE,
                             lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history)))
                log.info("epoch %d: %s", self.epoch, json.dumps({k: round(v, 4) for k, v in record.items()}))
            else:
                self.history.append(record)
            if self.dist.world > 1:
                log.info("rank %d/%d parameter checksum %s after epoch %d", self.dist.rank, self.dist.world,
                         checksum, self.epoch)
        return self.history
