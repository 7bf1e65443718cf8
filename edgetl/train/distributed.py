"""Data-parallel training across processes with torch.distributed: the job's processes (``World``), each
rank's share of the loss, evaluation summed over ranks, and DistributedDataParallel.

``torchrun`` (or ``edgetl finetune --nproc-per-node N``, which runs ``torch.distributed.run``) starts one
process per GPU, or per share of the CPU, and sets the env:// variables. ``start_world`` joins them
through ``torch.distributed.rendezvous("env://")`` and ``init_process_group``: NCCL on CUDA, gloo on CPU.
``--batch-size`` is the global batch. Each rank trains on its part of every global batch
(``edgetl.data.sharding``) and DDP averages the gradients, so the learning rate and schedule are those
of the global batch, and a run reaches the weights of one process to float tolerance where no
BatchNorm trains (each rank's BatchNorm normalises its own part of the batch; ``--sync-bn`` shares
the statistics on CUDA).

Waits that can last long (rank 0 scanning the dataset, a node building its caches) happen on the
job's store with progress lines and no timeout, not inside a collective, whose timeout they could
exceed. A process group initialised by the caller is used as it is (its waits are ``barrier`` calls).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from edgetl.core.deps import require
from edgetl.core.device import DeviceSetup
from edgetl.core.world import ProcessRole
from edgetl.data.sharding import Shard
from edgetl.errors import ConfigError, EdgetlError
from edgetl.train.config import FinetuneConfig, check_job
from edgetl.train.evaluate import EvalResult, evaluate_model, metrics_from_counts, prediction_counts
from edgetl.train.objective import TrainingLoss, hard_labels

torch = require("torch")
dist = torch.distributed
log = logging.getLogger(__name__)
T = TypeVar("T")

WAIT_POLL_S = 0.1
WAIT_REPORT_EVERY_S = 10.0


@dataclass
class World:
    """The processes of this run; ``World()`` is one process, where every collective is a no-op."""

    role: ProcessRole = field(default_factory=ProcessRole)
    device: Any = None  # where collectives run: the rank's GPU with NCCL, the CPU with gloo
    store: Any = None  # the job's key-value store (None: a group the caller initialised)
    owns_group: bool = False
    waits: int = 0

    @property
    def size(self) -> int:
        return self.role.world_size

    @property
    def rank(self) -> int:
        return self.role.rank

    @property
    def is_main(self) -> bool:
        return self.role.is_main

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.size)

    def wait_for_all(self, what: str) -> None:
        """Block until every rank has reached this point, logging every ``WAIT_REPORT_EVERY_S`` how many are
        still busy with ``what``. Polls the store: no timeout, however long a rank's part takes."""
        if self.size == 1:
            return
        if self.store is None:
            dist.barrier()
            return
        self.waits += 1
        key = "edgetl/arrived/{}".format(self.waits)
        arrived, started = int(self.store.add(key, 1)), time.monotonic()
        next_report = started + WAIT_REPORT_EVERY_S
        while arrived < self.size:
            if time.monotonic() >= next_report:
                log.info(
                    "waiting for %d of %d processes to finish %s (%.0f s)",
                    self.size - arrived,
                    self.size,
                    what,
                    time.monotonic() - started,
                )
                next_report += WAIT_REPORT_EVERY_S
            time.sleep(WAIT_POLL_S)
            arrived = int(self.store.add(key, 0))

    def from_main(self, value: Any, what: Optional[str] = None) -> Any:
        """Rank 0's ``value`` on every rank (after waiting for everyone to finish ``what``, if given)."""
        if self.size == 1:
            return value
        if what is not None:
            self.wait_for_all(what)
        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0, device=self.device)
        return holder[0]

    def run_on_main(self, work: Callable[[], T], what: str) -> T:
        """``work()`` run by rank 0 alone (the others wait, with progress, for it to finish ``what``); its result,
        or the one-line EdgetlError it raised, on every rank."""
        if self.size == 1:
            return work()
        outcome: Tuple[Optional[T], Optional[EdgetlError]] = (None, None)
        if self.is_main:
            try:
                outcome = (work(), None)
            except EdgetlError as exc:
                outcome = (None, exc)
        result, error = self.from_main(outcome, what)
        if error is not None:
            raise error
        return result

    def sum(self, tensors: Sequence[Any]) -> List[Any]:
        """Each tensor summed over the ranks (returned on its own device)."""
        if self.size == 1:
            return list(tensors)
        summed = []
        for tensor in tensors:
            on_device = tensor.to(self.device, copy=True)  # the caller's tensor stays as it was
            dist.all_reduce(on_device)
            summed.append(on_device.to(tensor.device))
        return summed

    def wrap(self, module: Any) -> Any:
        """``module`` in DistributedDataParallel (rank 0's parameters and buffers to all, gradients averaged
        over ranks at every step); itself in one process."""
        if self.size == 1:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def sync_buffers(self, module: Any) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP hands them over before each
        step, and each rank's last step then moves its own: after this, all ranks evaluate the model rank 0
        saves."""
        if self.size == 1:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def start_world(config: FinetuneConfig, setup: DeviceSetup, role: Optional[ProcessRole] = None) -> World:
    """Join the job this process belongs to (one-line errors for a global batch that does not divide by
    the world size, or ``--sync-bn`` off CUDA, before any work). One process: ``World()``."""
    role = role or ProcessRole.from_env()
    check_job(config, setup.device.type, role.world_size)
    if not role.distributed:
        return World(role)
    device = setup.device if setup.device.type == "cuda" else torch.device("cpu")
    if dist.is_initialized():
        if dist.get_world_size() != role.world_size:
            raise ConfigError(
                "the process group has {} processes, WORLD_SIZE says {}".format(dist.get_world_size(), role.world_size)
            )
        return World(role, device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    store, rank, world_size = next(dist.rendezvous("env://"))  # torch's env:// rendezvous (torchrun's store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
    log.info("joined a job of %d processes (%s), %d on this node", world_size, backend, role.local_world_size)
    return World(role, device, store, owns_group=True)


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of an epoch on a rank (dropout): rank 0 keeps the one-process seed ``seed*1000+epoch``;
    other ranks get a distinct 63-bit hash of (seed, epoch, rank)."""
    if rank == 0:
        return seed * 1000 + epoch
    digest = hashlib.sha256("edgetl-rank-seed:{}:{}:{}".format(seed, epoch, rank).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def use_sync_batch_norm(model: Any, config: FinetuneConfig, world: World) -> Any:
    """``--sync-bn`` (checked to be on CUDA): trainable BatchNorm layers normalise with the statistics of the
    global batch. Frozen stages stay in eval mode (EdgeClassifier.train keeps them there)."""
    if not config.sync_bn or world.size == 1:
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


class ShardedLoss:
    """Each rank's share of the global batch's mean loss. DDP averages gradients over the ``world_size``
    ranks, so a rank back-propagates (sum of its per-sample losses) x world_size / global batch size: the
    average is then the gradient of the global batch's mean loss, whatever the parts' sizes. A rank's
    padding sample (an empty part) weighs 0 but still runs, so that the rank joins the step's reduction."""

    def __init__(self, criterion: TrainingLoss, world: World, steps: List[Tuple[int, int]]) -> None:
        self.criterion = criterion.summed()
        self.world, self.steps = world, steps

    def __call__(self, index: int, logits: Any, labels: Any) -> Tuple[Any, Any, Any, int]:
        """(loss to back-propagate, summed loss, correct predictions, samples) of step ``index`` on this rank."""
        counted, global_count = self.steps[index]
        if counted == 0:
            zero = logits.sum() * 0.0
            return zero, zero.detach().double(), (labels[:0] == 0).sum(), 0
        summed = self.criterion(logits, labels)
        correct = (logits.argmax(1) == hard_labels(labels)).sum()
        return summed * (self.world.size / global_count), summed.detach().double(), correct, counted

    def totals(self, loss: Any, correct: Any, seen: int) -> Tuple[float, float]:
        """The epoch's mean loss and top-1 over all ranks."""
        seen_tensor = torch.tensor(seen, dtype=torch.int64, device=loss.device)
        loss, correct, seen_tensor = self.world.sum([loss, correct, seen_tensor])
        return loss.item() / seen_tensor.item(), correct.item() / seen_tensor.item()


def sharded_loss(world: World, criterion: TrainingLoss, count: int, batch_size: int) -> Optional[ShardedLoss]:
    """The loss weighting of a distributed run over ``count`` training samples; None for one process (the mean)."""
    if world.size == 1:
        return None
    return ShardedLoss(criterion, world, world.shard.steps(count, batch_size))


@torch.no_grad()
def evaluate_on_ranks(
    module: Any, batches: Any, setup: DeviceSetup, num_classes: int, criterion: Any, world: World
) -> EvalResult:
    """Loss (``criterion``) and accuracy of the val set. Distributed: over every rank's part of it (each image
    counted once), as per-rank sums of the loss, the confusion matrix and the top-k hits added up over ranks."""
    if world.size == 1:
        return evaluate_model(module, batches, setup.device, num_classes, criterion)
    module.eval()
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=criterion.label_smoothing, reduction="sum")
    loss = torch.zeros((), dtype=torch.float64)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    hits = 0
    for images, target in batches:
        logits, target = module(images.to(setup.device)).float().cpu(), target.cpu()
        loss += criterion(logits, target).double()
        batch_confusion, batch_hits = prediction_counts(logits.numpy(), target.numpy(), num_classes)
        confusion += batch_confusion
        hits += batch_hits
    counts = torch.from_numpy(np.append(confusion.ravel(), hits))
    loss, counts = world.sum([loss, counts])
    confusion, hits = counts[:-1].numpy().reshape(num_classes, num_classes), int(counts[-1])
    return metrics_from_counts(confusion, hits, min(5, num_classes), float(loss) / int(confusion.sum()))


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank went away (gloo or NCCL)."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or "gloo" in text or "NCCL" in text
