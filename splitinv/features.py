"""A disk cache of head activations, so that the frozen head is not recomputed every epoch of every job.

The cache memoises the head inside ``Split.observe``: it stores ``head(x)``, and :class:`CachedFeatureData`
applies the split's defense to every batch it serves, so a learned attack trains on ``defense(head(x))``
exactly as when it queries the device (a stochastic defense draws fresh noise every epoch, as it would
uncached), and one cache serves a sweep over defenses and their strengths.

The auxiliary images are drawn once (a fixed set: no per-epoch augmentation) and pushed through the victim
ONCE for all the cut points a sweep needs (one forward pass, :func:`splitinv.cut.extractor`). Each cut point's
activations go to their own file, keyed by a hash of everything they depend on: the victim (name, weights
file content, image size), the auxiliary data (its ``aux_describe()``: dataset, image size and transform,
seed, the auxiliary images' ids; not the evaluation settings, so one cache serves every ``n_eval``, defense
and attack of a sweep), the cut point and the storage dtype. Change any of them and the key changes, so a
stale file is never read.

Building streams: each batch is written into its place in a preallocated file as soon as it is computed, so
a build holds one batch in memory whatever the set size. A journal beside the file records the finished
batches (and their checksums): an interrupted build resumes at the first unfinished batch, and its files
are byte-identical to an uninterrupted build's. A finished file is renamed into place and read back
memory-mapped.

File layout (safetensors' layout, under the ``.pt`` name): an 8-byte little-endian header length, a JSON
header (tensor dtype, shape and offsets; ``__metadata__``: format, key, identity, and a SHA-256 per batch of
rows), padded to 4 KiB, then the raw row-major data. Every load checks the header and the file size (a
truncated or foreign file) and, once per cache object, the checksums of the files it reads; a bad entry is
named in a warning, deleted and recomputed. Builds in one folder are serialised by a lock file; temporary
files that an interrupted write left behind are removed by the next build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from splitinv.config import file_digest
from splitinv.cut import extractor
from splitinv.defenses.base import Defense, NoDefense
from splitinv.errors import SplitinvError
from splitinv.progress import track

log = logging.getLogger(__name__)
CACHE_FORMAT = "splitinv-features/2"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_CODES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.uint8: "U8"}
_FROM_CODE = {code: dtype for dtype, code in _CODES.items()}
DTYPES_ALL = {"uint8": torch.uint8, **DTYPES}  # what a file may hold (images: uint8)
_ALIGN = 4096  # the data starts on a page boundary
_DIGEST_CHARS = 32  # hex characters kept of each batch's SHA-256
PARTIAL, JOURNAL, TMP = ".partial", ".journal", ".tmp"
STALE_PARTIAL_S = 7 * 24 * 3600  # a foreign unfinished build untouched this long is removed


def victim_identity(victim: nn.Module, seed: int) -> dict[str, Any]:
    """What a victim's activations depend on: its description, and its weights' content (or the seed)."""
    identity = dict(victim.describe()) if hasattr(victim, "describe") else {"name": type(victim).__name__}
    weights = identity.get("weights")
    if weights and Path(str(weights)).is_file():
        identity["weights_sha256"] = file_digest(Path(str(weights)))
    elif weights == "random":
        identity["init_seed"] = seed  # random weights are a function of the seed
    return identity


class BadEntry(Exception):
    """A cache file that cannot be used (truncated, foreign, checksum mismatch); the message says why."""


# --------------------------------------------------------------------------------------------- the files


def _header_bytes(tensor: str, dtype: torch.dtype, shape: Sequence[int], meta: dict[str, str]) -> bytes:
    nbytes = math.prod(shape) * dtype.itemsize
    spec = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [0, nbytes]}
    return json.dumps({"__metadata__": meta, tensor: spec}, sort_keys=True).encode()


def _padded(header: bytes, data_start: int) -> bytes:
    """The file's first ``data_start`` bytes: the length, the header, spaces up to the data."""
    return struct.pack("<Q", data_start - 8) + header.ljust(data_start - 8, b" ")


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(header, data offset) of a cache file; :class:`BadEntry` when the file cannot be one."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BadEntry(f"truncated: {size} bytes, no header")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 1 << 26):
            raise BadEntry(f"truncated or not a cache file: header of {length} bytes in a {size}-byte file")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadEntry(f"unreadable header ({err})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise BadEntry("not a splitinv cache file (no metadata)")
    return header, 8 + length


class _Entry:
    """One finished cache file: checked on opening (header, key, size), verified on demand (checksums)."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        header, self.data_start = read_header(path)
        meta = header["__metadata__"]
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            raise BadEntry(f"written for another format or key ({meta.get('format')}, {meta.get('key')})")
        names = [k for k in header if k != "__metadata__"]
        if len(names) != 1 or header[names[0]].get("dtype") not in _FROM_CODE:
            raise BadEntry("not one tensor of a known dtype")
        self.name, spec = names[0], header[names[0]]
        self.dtype, self.shape = _FROM_CODE[spec["dtype"]], tuple(int(s) for s in spec["shape"])
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        size = path.stat().st_size
        if spec.get("data_offsets") != [0, self.nbytes] or size != self.data_start + self.nbytes:
            raise BadEntry(f"truncated: {size} bytes, expected {self.data_start + self.nbytes}")
        self.rows_per_chunk = int(meta.get("rows_per_chunk", 0))
        self.digests = json.loads(meta.get("chunk_sha256", "[]"))
        n_chunks = math.ceil(self.shape[0] / self.rows_per_chunk) if self.rows_per_chunk > 0 else -1
        if len(self.digests) != n_chunks:
            raise BadEntry("the header's checksums do not cover the rows")

    def verify(self) -> None:
        """Recompute every batch's checksum from the file (one batch in memory); BadEntry on a mismatch."""
        row_bytes = self.nbytes // max(1, self.shape[0])
        chunk = self.rows_per_chunk * row_bytes
        with self.path.open("rb") as f:
            f.seek(self.data_start)
            for i, expected in enumerate(self.digests):
                data = f.read(min(chunk, self.nbytes - i * chunk))
                if hashlib.sha256(data).hexdigest()[:_DIGEST_CHARS] != expected:
                    first = i * self.rows_per_chunk
                    last = min(self.shape[0], first + self.rows_per_chunk) - 1
                    raise BadEntry(f"checksum mismatch in rows {first}-{last}")

    def tensor(self) -> torch.Tensor:
        """The data, memory-mapped copy-on-write (nothing is read until used; the file is never written)."""
        size = self.data_start + self.nbytes
        raw = torch.from_file(str(self.path), shared=False, size=size, dtype=torch.uint8)
        return raw[self.data_start :].view(self.dtype).view(self.shape)


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class _Writer:
    """Streams one cache file: batch ``i`` goes to its rows in a preallocated ``.partial`` file, and the
    journal records it; :meth:`finish` writes the checksums into the header and renames the file into place.
    A journal that matches (key, rows, batch size, dtype) resumes at its first unfinished batch."""

    def __init__(
        self, path: Path, tensor: str, key: str, meta: dict[str, str], rows: int, batch: int
    ) -> None:
        self.path, self.tensor, self.key, self.meta = path, tensor, key, meta
        self.rows, self.batch = rows, batch
        self.n_batches = math.ceil(rows / batch)
        self.partial = path.with_name(f".{path.name}{PARTIAL}")
        self.journal_path = path.with_name(f".{path.name}{JOURNAL}")
        self.fd: int | None = None
        self.row_shape: list[int] | None = None
        self.dtype: str | None = None
        self.digests: list[str] = []
        self.data_start = 0
        journal = self._read_journal()
        if journal is not None:
            self.row_shape, self.dtype = journal["row_shape"], journal["dtype"]
            self.digests, self.data_start = list(journal["digests"]), int(journal["data_start"])
            settings = {k: v for k, v in journal.items() if k != "digests"}
            lines = [json.dumps(settings, sort_keys=True), *self.digests]
            self.journal_path.write_text("\n".join(lines) + "\n")  # without a torn last line
            log.info("feature cache: resuming %s at batch %d of %d", path.name, self.done, self.n_batches)

    @property
    def done(self) -> int:
        """Batches finished (the first ``done`` batches)."""
        return len(self.digests)

    def _read_journal(self) -> dict[str, Any] | None:
        """The journal of an unfinished build of this same entry: its first line the build's settings, then
        one checksum line per finished batch (a torn last line is ignored); None when there is none."""
        try:
            lines = self.journal_path.read_text().splitlines()
            journal = json.loads(lines[0])
            size = self.partial.stat().st_size
            wanted = {"format": CACHE_FORMAT, "key": self.key, "rows": self.rows, "batch_size": self.batch}
            if any(journal.get(k) != v for k, v in wanted.items()):
                return None
            row_bytes = math.prod(journal["row_shape"]) * DTYPES_ALL[journal["dtype"]].itemsize
            if size != int(journal["data_start"]) + self.rows * row_bytes:
                return None
        except (OSError, ValueError, IndexError, KeyError, TypeError):
            return None
        digests = []
        for line in lines[1 : self.n_batches + 1]:
            if len(line) != _DIGEST_CHARS:
                break
            digests.append(line)
        return {**journal, "digests": digests}

    def _create(self, value: torch.Tensor) -> None:
        """A new partial file sized for every row (sparse until written), its header space reserved."""
        self.row_shape, self.dtype = list(value.shape[1:]), str(value.dtype).removeprefix("torch.")
        header = self._header(["0" * _DIGEST_CHARS] * self.n_batches)
        self.data_start = -(-(8 + len(header)) // _ALIGN) * _ALIGN
        row_bytes = math.prod(self.row_shape) * value.element_size()
        self.partial.unlink(missing_ok=True)
        with self.partial.open("wb") as f:
            f.truncate(self.data_start + self.rows * row_bytes)
        settings = {
            "format": CACHE_FORMAT,
            "key": self.key,
            "rows": self.rows,
            "batch_size": self.batch,
            "row_shape": self.row_shape,
            "dtype": self.dtype,
            "data_start": self.data_start,
        }
        self.journal_path.write_text(json.dumps(settings, sort_keys=True) + "\n")
        self.digests = []

    def _header(self, digests: list[str]) -> bytes:
        meta = {**self.meta, "rows_per_chunk": str(self.batch), "chunk_sha256": json.dumps(digests)}
        assert self.row_shape is not None and self.dtype is not None
        return _header_bytes(self.tensor, DTYPES_ALL[self.dtype], [self.rows, *self.row_shape], meta)

    def write(self, index: int, value: torch.Tensor) -> None:
        """Write batch ``index`` (the next unfinished one) into its rows, then its checksum to the journal."""
        if index != self.done:
            raise SplitinvError(f"internal: batch {index} written to {self.path.name} after {self.done}.")
        dtype = str(value.dtype).removeprefix("torch.")
        if index == 0:
            self._create(value)
        elif [*value.shape[1:]] != self.row_shape or dtype != self.dtype:
            raise SplitinvError(
                f"internal: batch {index} of {self.path.name} is {tuple(value.shape)} {dtype}, "
                f"the journal says {self.row_shape} {self.dtype}."
            )
        if self.fd is None:
            self.fd = os.open(self.partial, os.O_RDWR)
        data = memoryview(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        _write_all(self.fd, data, self.data_start + index * self.batch * (data.nbytes // value.shape[0]))
        digest = hashlib.sha256(data).hexdigest()[:_DIGEST_CHARS]
        with self.journal_path.open("a") as f:  # after the data: a recorded batch is a written batch
            f.write(digest + "\n")
        self.digests.append(digest)

    def finish(self) -> None:
        """Checksums into the header, to disk, renamed into place; the journal goes."""
        if self.done != self.n_batches:
            raise SplitinvError(f"internal: {self.path.name} has {self.done} of {self.n_batches} batches.")
        if self.fd is None:
            self.fd = os.open(self.partial, os.O_RDWR)
        _write_all(self.fd, memoryview(_padded(self._header(self.digests), self.data_start)), 0)
        os.fsync(self.fd)
        self.close()
        os.replace(self.partial, self.path)
        self.journal_path.unlink(missing_ok=True)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def _folder_lock(root: Path) -> Iterator[None]:
    """One build at a time per cache folder (``.lock``, released when the process ends, however it ends)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield
        return
    with (root / ".lock").open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # pragma: no cover - a filesystem without locks
            log.debug("feature cache: %s cannot be locked; building without a lock", root)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(f, fcntl.LOCK_UN)


def clean_orphans(root: Path, keep: Sequence[Path] = ()) -> list[Path]:
    """Remove what interrupted writes left in ``root`` (call it holding the folder lock): temporary files,
    unfinished files without a journal (or the reverse), and unfinished builds of other entries untouched for
    :data:`STALE_PARTIAL_S`. Unfinished builds of ``keep`` (final paths) are left to resume. Returns the
    removed paths."""
    keep_names = {p.name for p in keep}
    removed = []
    now = time.time()
    for p in root.glob(".*"):
        if not p.is_file() or p.name == ".lock":
            continue
        orphan = p.name.endswith(TMP)
        for suffix, other in ((PARTIAL, JOURNAL), (JOURNAL, PARTIAL)):
            if p.name.endswith(suffix):
                final = p.name[1 : -len(suffix)]
                partner = p.with_name(f".{final}{other}")
                stale = now - p.stat().st_mtime > STALE_PARTIAL_S and final not in keep_names
                orphan = not partner.is_file() or stale
        if orphan:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    if removed:
        log.warning(
            "feature cache: removed %d file(s) left by interrupted writes in %s: %s",
            len(removed), root, ", ".join(p.name for p in removed),
        )  # fmt: skip
    return removed


# ------------------------------------------------------------------------------------------- the cache


class FeatureCache:
    """Activations of a fixed auxiliary set at several cut points of one victim, on disk.

    Args:
        root: cache folder. victim: the Victim. datamodule: a splitinv datamodule (its ``aux_dataset()``).
        points: every cut point to compute in the one forward pass (a sweep's points). dtype: storage dtype
        (float16 halves the disk and memory; decoders train on them cast back to float32). batch_size: rows
        per forward pass (and per checksum). verify: check the checksums of the files :meth:`load` reads
        (one sequential read of each, once per cache object).
    """

    def __init__(
        self,
        root: str | Path,
        victim: nn.Module,
        datamodule: Any,
        points: Sequence[str],
        dtype: str = "float16",
        seed: int = 0,
        batch_size: int = 64,
        verify: bool = True,
    ) -> None:
        if dtype not in DTYPES:
            raise SplitinvError(f"unknown cache dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
        if not points:
            raise SplitinvError("the feature cache needs at least one cut point (cache.points).")
        self.root = Path(root).expanduser()
        self.victim, self.datamodule, self.points = victim, datamodule, list(dict.fromkeys(points))
        self.dtype, self.seed, self.batch_size, self.verify = dtype, seed, batch_size, verify
        self._identity = {
            "format": CACHE_FORMAT,
            "victim": victim_identity(victim, seed),
            # the auxiliary set only: evaluation settings (n_eval, eval lists) do not change the activations
            "data": getattr(datamodule, "aux_describe", datamodule.describe)(),
            "dtype": dtype,
        }
        self._verified: set[Path] = set()

    def key(self, point: str | None) -> str:
        """The hash naming one point's file (``None``: the images' file)."""
        text = json.dumps({**self._identity, "point": point}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def path(self, point: str | None) -> Path:
        name = getattr(self.victim, "name", "model")
        what = "images" if point is None else point.replace("/", "_")
        return self.root / f"{name}-{what}-{self.key(point)}.pt"

    def _entry(self, point: str | None, deep: bool = False) -> _Entry | None:
        """The point's finished file, or None when it is missing or bad (a bad one is named in a warning and
        deleted). ``deep``: also verify its checksums (once per cache object)."""
        path = self.path(point)
        if not path.is_file():
            return None
        try:
            entry = _Entry(path, self.key(point))
            if deep and self.verify and path not in self._verified:
                entry.verify()
                self._verified.add(path)
            return entry
        except (BadEntry, OSError, ValueError, KeyError, TypeError) as err:
            log.warning("feature cache: %s is unusable (%s): deleting and recomputing it", path, err)
            self._verified.discard(path)
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            return None

    def missing(self) -> list[str]:
        """The points whose files are missing or fail the header and size checks."""
        return [p for p in self.points if self._entry(p) is None]

    def load(self, point: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, features) for one point, memory-mapped; every missing or bad point (and the images)
        is computed first, in one pass."""
        if point not in self.points:
            self.points.append(point)
        for _ in range(2):
            images, features = self._entry(None, deep=True), self._entry(point, deep=True)
            if images is not None and features is not None and not self.missing():
                return images.tensor(), features.tensor()
            self.compute()
        raise SplitinvError(f"the feature cache in {self.root} could not be written and read back.")

    @torch.no_grad()
    def compute(self) -> None:
        """One pass over the auxiliary set through the victim, streaming every missing point (and the
        images when missing) to disk batch by batch; resumes an interrupted build. Builds in one folder take
        turns."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _folder_lock(self.root):
            entries: list[str | None] = [None, *self.points]
            clean_orphans(self.root, keep=[self.path(p) for p in entries])
            todo = [p for p in entries if self._entry(p) is None]  # another job may have built them
            if todo:
                self._build(todo)

    def _build(self, todo: list[str | None]) -> None:
        points = [p for p in todo if p is not None]
        log.info("feature cache: computing %s in one pass -> %s", ", ".join(points) or "images", self.root)
        self.datamodule.setup("fit")
        dataset = self.datamodule.aux_dataset()
        rows = len(dataset)
        generator = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, generator=generator)
        torch.manual_seed(self.seed)  # datasets that draw random crops draw the same ones every time
        if rows == 0:
            raise SplitinvError("the auxiliary set is empty: the feature cache needs data.n_aux >= 1.")
        identity = json.dumps(self._identity, sort_keys=True, default=str)
        writers = {}
        for p in todo:
            meta = {"format": CACHE_FORMAT, "key": self.key(p), "identity": identity, "point": p or ""}
            tensor = "images" if p is None else "features"
            writers[p] = _Writer(self.path(p), tensor, self.key(p), meta, rows, self.batch_size)
        extract = extractor(self.victim, points) if points else None
        device = next(self.victim.parameters()).device
        self.victim.eval()
        try:
            for i, batch in enumerate(track(loader, desc="caching activations", unit="batch")):
                # every batch is drawn (the same random crops in the same order), finished ones skip the head
                needed = [p for p, w in writers.items() if w.done <= i]
                if not needed:
                    continue
                x = batch[0]
                if None in needed:
                    writers[None].write(i, (x * 255).round().clamp(0, 255).to(torch.uint8))
                wanted = [p for p in needed if p is not None]
                if wanted and extract is not None:
                    out = extract(x.to(device))
                    for p in wanted:
                        writers[p].write(i, out[p].to(DTYPES[self.dtype]).cpu())
            for w in writers.values():
                w.finish()
                self._verified.add(w.path)
        finally:
            for w in writers.values():
                w.close()


class _Pairs(Dataset):
    def __init__(self, images: torch.Tensor, features: torch.Tensor) -> None:
        self.images, self.features = images, features

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i].float() / 255, "observation": self.features[i]}


class _Observe:
    """A collate function: stacks a batch of pairs and applies the defense to the cached head outputs."""

    def __init__(self, defense: Defense) -> None:
        self.defense = defense

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = default_collate(items)
        with torch.no_grad():
            batch["observation"] = self.defense(batch["observation"].float())
        return batch


class CachedFeatureData:
    """Stands in for a datamodule in a learned attack's ``fit``: {"image", "observation"} batches, where the
    observation is ``defense(head(image))`` with ``head(image)`` read from the cache."""

    def __init__(
        self,
        cache: FeatureCache,
        point: str,
        batch_size: int,
        seed: int = 0,
        defense: Defense | None = None,
    ) -> None:
        self.cache, self.point, self.batch_size, self.seed = cache, point, batch_size, seed
        self.defense = defense if defense is not None else NoDefense()
        self._pairs: _Pairs | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._pairs is None:
            self._pairs = _Pairs(*self.cache.load(self.point))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        generator = torch.Generator().manual_seed(self.seed)
        collate = None if self.defense.is_identity else _Observe(self.defense)
        return DataLoader(
            self._pairs, batch_size=self.batch_size, shuffle=True, generator=generator, collate_fn=collate
        )
