"""The activation cache's files: streamed builds (one batch in memory), resumes, bad entries, orphans."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from splitinv import build_victim, cut
from splitinv.config import compose
from splitinv.data import FashionMNISTDataModule
from splitinv.features import STALE_PARTIAL_S, FeatureCache, read_header
from splitinv.run import run

POINTS = ["layer1", "layer2"]


def _victim():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_victim("resnet18", image_size=32)


def _cache(root: Path, victim, points=POINTS) -> FeatureCache:
    dm = FashionMNISTDataModule(vendored=True, image_size=32, n_aux=40, n_eval=4)
    return FeatureCache(root, victim, dm, points, batch_size=16)  # 3 batches: 16, 16, 8


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("*.pt"))}


class Boom(Exception):
    pass


def test_an_interrupted_build_is_on_disk_batch_by_batch_and_resumes_bit_identically(tmp_path: Path) -> None:
    victim = _victim()
    _cache(tmp_path / "whole", victim).compute()
    whole = _files(tmp_path / "whole")
    assert len(whole) == 3  # images + 2 points

    calls: list[int] = []
    interrupt = [True]

    def hook(*_: object) -> None:
        calls.append(1)
        if len(calls) == 2 and interrupt[0]:
            raise Boom  # killed during the second batch's forward pass

    handle = victim.model.conv1.register_forward_hook(hook)
    root = tmp_path / "interrupted"
    cache = _cache(root, victim)
    with pytest.raises(Boom):
        cache.compute()
    assert not list(root.glob("*.pt"))  # nothing unfinished is ever visible as an entry
    # what was finished is already in its rows of each (preallocated) file, and recorded in its journal:
    # the images of batches 1 and 2 (batch 2's were written before its forward pass), activations of batch 1
    for point in [None, *POINTS]:
        final = cache.path(point)
        partial, journal = root / f".{final.name}.partial", root / f".{final.name}.journal"
        lines = journal.read_text().splitlines()
        done = 2 if point is None else 1
        assert len(lines) == 1 + done  # the build's settings, one checksum per finished batch
        start = json.loads(lines[0])["data_start"]
        row_bytes = (len(whole[final.name]) - start) // 40
        written = start + done * 16 * row_bytes
        data = partial.read_bytes()
        assert len(data) == len(whole[final.name])  # sized for every row up front
        assert data[start:written] == whole[final.name][start:written]
        assert not any(data[written:])  # the rest not written yet
    calls.clear()
    interrupt[0] = False
    cache.compute()  # resumes: the head runs on batches 2 and 3 only
    assert len(calls) == 2
    handle.remove()
    assert _files(root) == whole  # byte for byte what the uninterrupted build wrote
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == [".lock"]  # no journal left
    images, feats = cache.load("layer2")
    head, _ = cut(victim, "layer2")
    with torch.no_grad():
        expected = head(images.float() / 255)
    assert torch.allclose(feats.float(), expected, atol=2e-2, rtol=1e-2)


MEMORY_SCRIPT = r"""
import resource, sys, threading, time, warnings
import torch
from torch.utils.data import Dataset
from splitinv import build_victim
from splitinv.cut import extractor
from splitinv.features import FeatureCache

N, BATCH, SIZE = int(sys.argv[2]), 64, 32

class Noise(Dataset):
    def __len__(self):
        return N
    def __getitem__(self, i):
        return torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)), 0, i

class Data:
    def describe(self):
        return {"name": "noise", "n": N}
    def setup(self, stage):
        pass
    def aux_dataset(self):
        return Noise()

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

torch.set_num_threads(1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    victim = build_victim("resnet18", image_size=SIZE)
with torch.no_grad():  # warm up: the kernels and the allocator's first blocks
    extractor(victim, ["conv1"])(torch.rand(BATCH, 3, SIZE, SIZE))
cache = FeatureCache(sys.argv[1], victim, Data(), ["conv1"], batch_size=BATCH)
peak, done = [rss()], threading.Event()
def sample():
    while not done.is_set():
        peak.append(rss())
        time.sleep(0.002)
base = rss()
thread = threading.Thread(target=sample)
thread.start()
cache.compute()
done.set()
thread.join()
print((max(peak) - base) / 2**20)
"""


def _build_growth_mib(root: Path, n: int) -> float:
    """RSS growth (MiB) of a fresh process while it builds the conv1 cache of ``n`` noise images."""
    script = root / "build.py"
    script.write_text(MEMORY_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, str(script), str(root / f"cache{n}"), str(n)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


def test_building_holds_one_batch_whatever_the_set_size(tmp_path: Path) -> None:
    """conv1 activations of 4096 images take 128 MiB in fp16 (2 MiB a batch of 64), of 512 images 16 MiB:
    the build's memory must not grow with the set (a build that holds the set grows by 128 MiB or more)."""
    small, large = _build_growth_mib(tmp_path, 512), _build_growth_mib(tmp_path, 4096)
    # measured here: 13-22 MiB for either (the extractor, loader and allocator's fixed share), 417 MiB for
    # 4096 images with a build that concatenates the set; the bounds leave room for a noisy machine
    assert large - small < 40, f"RSS growth {small:.1f} MiB for 512 images, {large:.1f} MiB for 4096"
    assert large < 56, f"the build grew RSS by {large:.1f} MiB for a 128-MiB set"
    (features,) = [p for p in (tmp_path / "cache4096").glob("*-conv1-*.pt")]
    header, start = read_header(features)
    assert header["features"]["shape"] == [4096, 64, 16, 16]
    assert header["features"]["dtype"] == "F16" and start % 4096 == 0
    assert features.stat().st_size == start + 4096 * 64 * 16 * 16 * 2


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("flip_data", "checksum mismatch in rows 16-31"),
        ("truncate", "truncated"),
        ("flip_header", "unreadable header|not a splitinv cache file|another format"),
        ("torch_file", "truncated or not a cache file|unreadable header"),
    ],
)
def test_a_bad_entry_is_named_in_a_warning_and_recomputed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, reason: str
) -> None:
    victim = _victim()
    _cache(tmp_path, victim).compute()
    path = _cache(tmp_path, victim).path("layer2")
    good = path.read_bytes()
    _header, start = read_header(path)
    row_bytes = (len(good) - start) // 40
    if damage == "flip_data":
        _flip_byte(path, start + 20 * row_bytes + 3)  # a row of the second batch
    elif damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "flip_header":
        _flip_byte(path, 8 + 2)
    else:  # an older splitinv's torch.save file under this name
        torch.save({"features": torch.zeros(40, 1)}, path)
    calls: list[int] = []
    victim.model.conv1.register_forward_hook(lambda *_: calls.append(1))
    cache = _cache(tmp_path, victim)
    with caplog.at_level(logging.WARNING, logger="splitinv.features"):
        _images, feats = cache.load("layer2")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in m and "recomputing" in m for m in warned), warned
    assert any(re.search(reason, m) for m in warned), warned
    assert len(calls) == 3  # recomputed (one pass); the other entries were not rewritten
    assert path.read_bytes() == good
    assert torch.equal(
        feats.view(torch.uint8).flatten(), torch.frombuffer(bytearray(good[start:]), dtype=torch.uint8)
    )


def test_a_run_on_a_corrupted_cache_warns_recomputes_and_scores_as_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = [
        "victim.image_size=32",
        "data=fashion_mnist_mini",
        "data.n_aux=48",
        "data.n_eval=4",
        "data.batch_size=16",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "utility_test=false",
        "baselines=false",
        "cut=layer1",
        "cache.enabled=true",
        f"cache.dir={tmp_path / 'cache'}",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = run(compose(overrides, output_dir=tmp_path / "a"))
    (entry,) = (tmp_path / "cache").glob("*-layer1-*.pt")
    _header, start = read_header(entry)
    _flip_byte(entry, start + 100)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="splitinv.features"):
        warnings.simplefilter("ignore")
        second = run(compose(overrides, output_dir=tmp_path / "b"))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(entry.name in m and "checksum mismatch" in m for m in warned), warned
    for metric in ("ssim", "psnr"):
        assert second[metric]["mean"] == pytest.approx(first[metric]["mean"], abs=1e-6)


def test_orphans_of_interrupted_writes_are_removed_and_resumable_builds_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    victim = _victim()
    cache = _cache(tmp_path, victim)
    tmp_path.mkdir(exist_ok=True)
    orphans = [
        tmp_path / ".resnet18-layer1-0123.pt-x8y7.tmp",  # an atomic save that never got renamed
        tmp_path / ".resnet18-layer9-aaaa.pt.partial",  # an unfinished file without its journal
        tmp_path / ".resnet18-layer8-bbbb.pt.journal",  # a journal without its file
        tmp_path / ".resnet18-layer7-cccc.pt.partial",  # another entry's build, untouched for too long
        tmp_path / ".resnet18-layer7-cccc.pt.journal",
    ]
    kept = [tmp_path / ".resnet18-layer6-dddd.pt.partial", tmp_path / ".resnet18-layer6-dddd.pt.journal"]
    for p in orphans + kept:
        p.write_text("x")
    old = time.time() - STALE_PARTIAL_S - 60
    for p in orphans[3:]:
        os.utime(p, (old, old))
    with caplog.at_level(logging.WARNING, logger="splitinv.features"):
        cache.compute()
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in kept)  # a recent build of another entry may still resume
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "removed 5 file(s) left by interrupted writes" in warned and orphans[0].name in warned
    assert len(list(tmp_path.glob("*.pt"))) == 3
