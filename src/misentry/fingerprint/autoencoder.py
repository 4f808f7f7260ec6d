"""A small variational autoencoder of the owner's images: the latent space that PublicCheck walks
and SSF-BO searches.

Both papers use a generative model trained on the owner's training data; SSF-BO's code uses a
one-hidden-layer MLP VAE (784-256-32 on MNIST, Bernoulli likelihood). This module gives that
shape for any image size: flatten, one hidden ReLU layer, a Gaussian latent, one hidden ReLU
layer, sigmoid pixels. It is trained once per generation run with its own seed (cheap next to
the search: seconds on mnist5k), and only ever on the images it is given, which callers take
from the owner's ``owner_train`` pool.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from misentry.fingerprint.base import GenerationError, SearchContext


@dataclass(frozen=True)
class AutoencoderParams:
    """Attributes:
    latent: latent dimension d (SSF-BO: 32 on MNIST; smaller spaces suit BO better).
    hidden: width of the encoder's and the decoder's hidden layer.
    epochs: passes over the training images.
    batch_size: images per Adam step.
    lr: Adam learning rate.
    beta: weight of the KL term (1 = the plain VAE evidence bound).
    """

    latent: int = 16
    hidden: int = 256
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("latent", "hidden", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, not {getattr(self, name)}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, not {self.lr}")
        if self.beta < 0:
            problems.append(f"beta must be >= 0, not {self.beta}")
        if problems:
            raise ValueError(f"AutoencoderParams: {'; '.join(problems)}")


@dataclass(frozen=True)
class LatentSearchParams:
    """The autoencoder fields of a latent-space generator's parameters (PublicCheck, SSF-BO),
    flat so that ``--set ae_epochs=20`` reaches them; :attr:`autoencoder` assembles them.

    Attributes:
    latent, ae_hidden, ae_epochs, ae_batch_size, ae_lr, ae_beta: the
        :class:`AutoencoderParams` ``latent``, ``hidden``, ``epochs``, ``batch_size``, ``lr``,
        ``beta``; the autoencoder is trained on the owner's ``owner_train`` pool.
    """

    latent: int = 16
    ae_hidden: int = 256
    ae_epochs: int = 50
    ae_batch_size: int = 128
    ae_lr: float = 1e-3
    ae_beta: float = 1.0

    @property
    def autoencoder(self) -> AutoencoderParams:
        return AutoencoderParams(
            latent=self.latent,
            hidden=self.ae_hidden,
            epochs=self.ae_epochs,
            batch_size=self.ae_batch_size,
            lr=self.ae_lr,
            beta=self.ae_beta,
        )

    def autoencoder_problems(self) -> list[str]:
        """What is wrong with the autoencoder fields (empty when nothing is)."""
        try:
            _ = self.autoencoder
        except ValueError as err:
            return [str(err).removeprefix("AutoencoderParams: ")]
        return []


class Autoencoder(nn.Module):
    """MLP VAE for images of one shape (C, H, W), pixels in [0, 1]."""

    def __init__(self, shape: tuple[int, int, int], hidden: int, latent: int) -> None:
        super().__init__()
        self.shape = tuple(shape)
        size = math.prod(shape)
        self.latent = latent
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(size, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, latent)
        self.log_var = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, size))

    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mean(h), self.log_var(h).clamp(-10.0, 10.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean of each image, shape (N, latent)."""
        return self._posterior(x)[0]

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(z)
        return out.view(z.shape[0], *self.shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] of shape (N, C, H, W) for latent codes of shape (N, latent)."""
        return torch.sigmoid(self.decode_logits(z))

    def loss(self, x: torch.Tensor, beta: float, noise: torch.Tensor) -> torch.Tensor:
        """The negative evidence bound per image: Bernoulli reconstruction + beta * KL."""
        mean, log_var = self._posterior(x)
        z = mean + torch.exp(0.5 * log_var) * noise
        recon = F.binary_cross_entropy_with_logits(self.decode_logits(z), x, reduction="none")
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=1)
        return (recon.flatten(1).sum(dim=1) + beta * kl).mean()


@dataclass(frozen=True)
class AutoencoderFit:
    """What training gave: the model, its mean absolute reconstruction error on the training
    images (pixel units), and the seconds it took."""

    model: Autoencoder
    reconstruction_error: float
    seconds: float


def train_autoencoder(
    images: torch.Tensor,
    params: AutoencoderParams,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> AutoencoderFit:
    """Train an :class:`Autoencoder` on float ``images`` (N, C, H, W) in [0, 1] with ``seed``.

    ``progress(done, total)`` is called after each epoch. The model is returned in eval mode
    with its parameters frozen.
    """
    if images.dim() != 4 or images.shape[0] < 2:
        raise ValueError(
            f"train_autoencoder needs (N >= 2, C, H, W) images, not {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"train_autoencoder needs float images in [0, 1] (ImageSet.x), not {images.dtype}"
        )
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Autoencoder(tuple(images.shape[1:]), params.hidden, params.latent)  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    x_all = images.float()
    n = x_all.shape[0]
    model.train()
    for epoch in range(params.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, params.batch_size):
            batch = x_all[order[start : start + params.batch_size]]
            noise = torch.randn(batch.shape[0], params.latent, generator=gen)
            optimizer.zero_grad(set_to_none=True)
            model.loss(batch, params.beta, noise).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        if progress is not None:
            progress(epoch + 1, params.epochs)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        error = float((model.decode(model.encode(x_all)) - x_all).abs().mean())
    return AutoencoderFit(model, error, time.perf_counter() - started)


def owner_autoencoder(
    method: str, params: AutoencoderParams, context: SearchContext, seed: int
) -> AutoencoderFit:
    """The autoencoder of a generator's search: trained with ``seed`` on the owner's
    ``owner_train`` pool from ``context``, reporting its epochs as the stage "autoencoder"."""
    if context.pools is None:
        raise GenerationError(
            f"{method} trains its autoencoder on the owner's owner_train pool: pass "
            "SearchContext(pools=...)"
        )
    return train_autoencoder(
        context.pools["owner_train"].x,
        params,
        seed,
        lambda done, total: context.report("autoencoder", done, total),
    )
