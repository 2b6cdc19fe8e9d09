"""He et al.'s public rMLE loop, ported line by line to plain PyTorch: the reference ``attack.preset=he2019``
is checked against (tests/test_he2019.py; the README's he2019 table).

It follows ``inverse_whitebox_MNIST.py`` / ``inverse_whitebox_CIFAR.py`` of zechenghe/Inverse_Collaborative_
Inference, with nothing from splitinv's attack code: start from a zero *normalised* image, Adam(lr, eps=1e-3,
amsgrad=True) on ``mean((f(x) - v)^2) + lambda_TV * TV(x) + lambda_l2 * mean(x^2)`` where TV is the code's
(mean squared vertical plus mean squared horizontal neighbour differences), unconstrained; unnormalise and
clip to [0, 1] at the end. Scored with the code's PSNR (``10 log10(1 / mean((x - x_hat)^2))``, one image).

    python experiments/scripts/he2019_reference.py --weights lenet.pt --cut conv1 --iters 500 --n 16
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import Tensor, nn


def tv_he2019(x: Tensor) -> Tensor:
    """The code's TV(x) (utils.py): per-image mean squared neighbour differences, averaged over the batch."""
    b, _, h, w = x.shape
    count_h = x[:, :, 1:, :].numel() / b
    count_w = x[:, :, :, 1:].numel() / b
    h_tv = (x[:, :, 1:, :] - x[:, :, : h - 1, :]).pow(2).sum()
    w_tv = (x[:, :, :, 1:] - x[:, :, :, : w - 1]).pow(2).sum()
    return (h_tv / count_h + w_tv / count_w) / b


def invert_one(
    head: nn.Module, target: Tensor, shape: tuple[int, ...], iters: int, lr: float, lambda_tv: float,
    lambda_l2: float,
) -> Tensor:  # fmt: skip
    """One image, as the code does it (batch of one): returns the *normalised* reconstruction."""
    x = torch.zeros(shape, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr, eps=1e-3, amsgrad=True)
    for _ in range(iters):
        opt.zero_grad()
        loss = (head(x) - target).pow(2).mean() + lambda_tv * tv_he2019(x) + lambda_l2 * x.pow(2).mean()
        loss.backward()
        opt.step()
    return x.detach()


def psnr_he2019(x: Tensor, x_hat: Tensor) -> float:
    return 10 * math.log10(1.0 / float((x - x_hat).pow(2).mean()))


def main(argv: list[str] | None = None) -> None:
    from splitinv.data import MNISTDataModule
    from splitinv.victims import build_victim

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a he2019_mnist checkpoint (splitinv-train-victim)")
    parser.add_argument("--cut", default="conv1")
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--lambda-tv", type=float, default=1.0)
    parser.add_argument("--lambda-l2", type=float, default=0.0)
    parser.add_argument("--n", type=int, default=16, help="evaluation images (data=mnist_mini, seed 0)")
    args = parser.parse_args(argv)

    victim = build_victim("he2019_mnist", weights=args.weights)
    names = [n for n, _ in victim.model.named_children()]
    head = victim.model[: names.index(args.cut) + 1].eval()
    for p in head.parameters():
        p.requires_grad_(False)
    data = MNISTDataModule(vendored=True, download=False, image_size=28, channels=1, n_eval=args.n)
    mean, std = victim.normalize.mean, victim.normalize.std
    scores = []
    for image, _, _ in data.eval_dataset():
        z_ref = ((image[None] - mean) / std).float()
        z = invert_one(
            head, head(z_ref), tuple(z_ref.shape), args.iters, args.lr, args.lambda_tv, args.lambda_l2
        )
        scores.append(psnr_he2019(image[None], (mean + std * z).clamp(0, 1)))
    print(f"he2019 code port, {args.cut}, {args.iters} iterations: PSNR {sum(scores) / len(scores):.2f} dB "
          f"(mean of {len(scores)} images)")  # fmt: skip


if __name__ == "__main__":
    main()
