"""Capture pooled residual-stream features of every text at every layer, with `Trainer.predict`.

Layer convention (tested in tests/test_capture.py): layer 0 is the embedding output (the input
of decoder block 1), layer l in 1..L is the raw output of decoder block l. This matches
`output_hidden_states[l]` for l < L; transformers applies the final norm to its last entry, so
layer L is the block's own output, not `hidden_states[L]`.

Pooling happens inside each block's forward hook: the mean over a text's tokens at positions
>= its offset, positions counted from the attention mask, accumulated in fp32. So no (B, T, H)
tensor outlives its layer, left and right padding give the same features, and the forward stops
right after the deepest requested layer (the LM head never runs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from emovec.errors import EmovecError
from emovec.models import LoadedModel
from emovec.store import FeatureStore

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the deepest hook: nothing after that layer is needed."""


@dataclass
class CaptureItem:
    index: int
    ids: list[int]
    offset: int  # first pooled position; texts at or below it pool nothing (count 0)


def resolve_layers(spec: Any, num_layers: int) -> list[int]:
    """`all` or a list of layer indices in 0..num_layers (negative counts from the end)."""
    if spec in (None, "all"):
        return list(range(num_layers + 1))
    if isinstance(spec, int):
        spec = [spec]
    layers = sorted({int(x) % (num_layers + 1) if int(x) < 0 else int(x) for x in spec})
    bad = [x for x in layers if not 0 <= x <= num_layers]
    if bad:
        raise EmovecError(f"extract.layers: {bad} outside 0..{num_layers} (0 = embeddings, {num_layers} = last block)")
    return layers


def tokenize_items(tokenizer: Any, texts: Sequence[str], offsets: Sequence[int], max_length: int) -> list[CaptureItem]:
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length)
    return [CaptureItem(i, list(ids), int(off)) for i, (ids, off) in enumerate(zip(enc["input_ids"], offsets))]


def plan_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int = 256) -> list[list[int]]:
    """Length-sorted batches whose padded size (rows x longest) stays within `batch_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * longest > batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class RankBatchSampler(Sampler[list[int]]):
    """This rank's share of the planned batches: batch b goes to rank b mod world_size.

    Each text sits in exactly one batch and each batch on one rank, so no story is repeated to
    even out the ranks (predict needs no lockstep), and finished batches are skipped on resume.
    """

    def __init__(self, plan: list[list[int]], done: set[int], rank: int = 0, world_size: int = 1) -> None:
        self.batches = [(b, idx) for b, idx in enumerate(plan) if b % world_size == rank and b not in done]

    def __iter__(self):
        for b, idx in self.batches:
            yield [(b, i) for i in idx]

    def __len__(self) -> int:
        return len(self.batches)


class _PlannedDataset(Dataset):
    """Indexed by (batch_id, item index) so the batch id travels with its items."""

    def __init__(self, items: Sequence[CaptureItem]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, CaptureItem]:
        b, i = key
        return b, self.items[i]


def collate(batch: list[tuple[int, CaptureItem]], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    batch_ids = {b for b, _ in batch}
    items = [it for _, it in batch]
    longest = max(len(it.ids) for it in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it.ids)
        cols = slice(0, n) if padding_side == "right" else slice(longest - n, longest)
        ids[row, cols] = torch.tensor(it.ids)
        mask[row, cols] = 1
    return {
        "batch_id": torch.tensor(batch_ids.pop() if len(batch_ids) == 1 else -1),
        "input_ids": ids,
        "attention_mask": mask,
        "offset": torch.tensor([it.offset for it in items]),
        "index": torch.tensor([it.index for it in items]),
    }


def pooling_weights(attention_mask: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """1 for the tokens a text pools over (its own positions >= offset), else 0; shape (B, T)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return (attention_mask.bool() & (positions >= offset[:, None])).float()


class CaptureModule(pl.LightningModule):
    """Runs the model over planned batches and writes each batch's pooled features as a shard."""

    def __init__(self, loaded: LoadedModel, layers: Sequence[int], store: FeatureStore,
                 items: Sequence[CaptureItem], plan: list[list[int]], padding_side: str = "right") -> None:
        super().__init__()
        # Kept outside the module tree: Lightning must not move a device_map-dispatched model,
        # and the capture has no parameters of its own to train or checkpoint.
        object.__setattr__(self, "loaded", loaded)
        self.layers = list(layers)
        self.store = store
        self._slot = {layer: k for k, layer in enumerate(self.layers)}
        self._pooled: list[torch.Tensor | None] = [None] * len(self.layers)
        self._weights: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._written = 0
        self.items, self.plan, self.padding_side = list(items), plan, padding_side
        # On resume one rank may find all its batches already on disk.
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def predict_dataloader(self) -> DataLoader:
        # Called after the launcher has started every rank, so the rank and world size are final.
        sampler = RankBatchSampler(self.plan, self.store.done_batches(), self.global_rank, self.trainer.world_size)
        pad_id = pad_token_id(self.loaded.tokenizer)
        return DataLoader(_PlannedDataset(self.items), batch_sampler=sampler,
                          collate_fn=lambda b: collate(b, pad_id, self.padding_side))

    # Lightning calls this on every rank once the device is known.
    def on_predict_start(self) -> None:
        # Several CPU processes on one node share its cores instead of each taking them all.
        local_world = max(1, self.trainer.world_size // max(1, self.trainer.num_nodes))
        if self.trainer.strategy.root_device.type == "cpu" and local_world > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        model = self.loaded.model
        if not getattr(model, "hf_device_map", None):
            model.to(self.trainer.strategy.root_device)
        self._register_hooks()

    def on_predict_end(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pool(self, layer: int, hidden: Any) -> None:
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        if h.dim() == 4:  # Gemma 3n's altup keeps several streams; the first is the residual
            h = h[0]
        w = self._weights.to(h.device)
        summed = torch.einsum("bth,bt->bh", h.float(), w)
        # Stays on the device: a copy to the host here would sync the GPU once a layer.
        self._pooled[self._slot[layer]] = summed / w.sum(1, keepdim=True).clamp(min=1)
        if layer == self.layers[-1]:
            raise _StopForward

    def _register_hooks(self) -> None:
        blocks = self.loaded.layers
        if 0 in self._slot:
            def embed_hook(_module: Any, args: tuple, kwargs: dict) -> None:
                self._pool(0, args[0] if args else kwargs["hidden_states"])
            self._handles.append(blocks[0].register_forward_pre_hook(embed_hook, with_kwargs=True))
        for layer in self.layers:
            if layer == 0:
                continue

            def hook(_module: Any, _args: Any, output: Any, layer: int = layer) -> None:
                self._pool(layer, output)
            self._handles.append(blocks[layer - 1].register_forward_hook(hook))

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        mask = batch["attention_mask"]
        self._weights = pooling_weights(mask, batch["offset"])
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        self._pooled = [None] * len(self.layers)
        try:
            self.loaded.model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions,
                              use_cache=False)
        except _StopForward:
            pass
        if any(p is None for p in self._pooled):
            raise EmovecError(f"{self.loaded.name}: a capture hook did not fire; the forward skipped a block")
        first = self._pooled[0].device
        mean = torch.stack([p.to(first) for p in self._pooled], dim=1).cpu()  # (B, n_layers, H), one copy
        count = self._weights.sum(1).long().cpu()
        if not torch.isfinite(mean).all():
            bad = (~torch.isfinite(mean)).nonzero()[0].tolist()
            raise EmovecError(
                f"non-finite activations for text #{int(batch['index'][bad[0]])} at layer "
                f"{self.layers[bad[1]]} of {self.loaded.name}; try model.dtype=float32"
            )
        self.store.write_shard(int(batch["batch_id"]), batch["index"].cpu(), mean, count)
        self._written += 1
        _maybe_inject_fault(self._written, self.global_rank)


def _maybe_inject_fault(written: int, rank: int) -> None:
    """Test hook: EMOVEC_FAULT_AFTER_SHARDS=n kills this process (on EMOVEC_FAULT_RANK) after n shards."""
    after = os.environ.get("EMOVEC_FAULT_AFTER_SHARDS")
    if after and written >= int(after) and rank == int(os.environ.get("EMOVEC_FAULT_RANK", rank)):
        os._exit(17)


def pad_token_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def run_capture(loaded: LoadedModel, items: Sequence[CaptureItem], layers: Sequence[int], store: FeatureStore,
                plan: list[list[int]], trainer: pl.Trainer, padding_side: str = "right") -> bool:
    """Capture every unfinished batch; True on the rank that should go on to assemble (rank 0)."""
    done = store.done_batches()
    if done:
        log.info("resuming capture: %d of %d batches already on disk", len(done), len(plan))
    if len(done) >= len(plan):
        return trainer.is_global_zero
    module = CaptureModule(loaded, layers, store, items, plan, padding_side)
    trainer.predict(module, return_predictions=False)
    trainer.strategy.barrier("capture-done")
    return trainer.is_global_zero
