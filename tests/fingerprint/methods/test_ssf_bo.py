"""SSF-BO: Bayesian optimisation of the output-layer sensitivity in a VAE's latent space."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from misentry.data import ImageSet, Pools
from misentry.fingerprint.autoencoder import train_autoencoder
from misentry.fingerprint.base import GenerationError, SearchContext, on_lattice
from misentry.fingerprint.bundle import FingerprintSet
from misentry.fingerprint.methods.ssf import last_layer_sensitivity
from misentry.fingerprint.methods.ssf_bo import SsfBo, SsfBoParams
from misentry.models import predict
from misentry.models.train import evaluation

SMALL = SsfBoParams(latent=4, ae_hidden=64, ae_epochs=15, iterations=15, candidates=128)
N = 10


@pytest.fixture(scope="module")
def progress() -> dict[str, list[tuple[int, int]]]:
    return {}


@pytest.fixture(scope="module")
def run(
    target: nn.Module,
    sources: ImageSet,
    pools: Pools,
    progress: dict[str, list[tuple[int, int]]],
) -> FingerprintSet:
    def record(stage: str, done: int, total: int) -> None:
        progress.setdefault(stage, []).append((done, total))

    context = SearchContext(pools=pools, progress=record)
    return SsfBo(SMALL).generate(target, sources, n=N, seed=0, context=context)


def sensitivity(target: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with evaluation(target), torch.no_grad():
        return last_layer_sensitivity(target, x)[0]


def test_fingerprints_are_more_sensitive_than_their_decoded_sources(
    run: FingerprintSet, target: nn.Module, sources: ImageSet, pools: Pools
) -> None:
    reached = sensitivity(target, run.x)
    recorded = torch.tensor(run.manifest["sensitivity_fingerprints"])
    assert reached.tolist() == pytest.approx(recorded.tolist(), rel=1e-4, abs=1e-9)
    # the start, Dec(Enc(x0)) on the lattice, recomputed with the same VAE retrained by its seed
    fit = train_autoencoder(
        pools["owner_train"].x, SMALL.autoencoder, run.manifest["autoencoder_seed"]
    )
    with torch.no_grad():
        z0 = fit.model.encode(sources.x[run.source_indices]).clamp(-SMALL.bound, SMALL.bound)
        start = sensitivity(target, on_lattice(fit.model.decode(z0)))
    assert start.tolist() == pytest.approx(run.manifest["sensitivity_start"], rel=1e-4, abs=1e-9)
    assert bool((reached >= start * (1 - 1e-5)).all())
    assert float((reached > start).float().mean()) >= 0.8
    assert float(reached.mean()) > 2 * float(start.mean())
    assert run.manifest["autoencoder_reconstruction_error"] == pytest.approx(
        fit.reconstruction_error
    )


def test_every_evaluation_is_one_forward_pass_and_progress_is_reported(
    run: FingerprintSet, progress: dict[str, list[tuple[int, int]]]
) -> None:
    evaluations = N * (SMALL.latent + 1 + SMALL.iterations)
    assert run.manifest["n_init"] == SMALL.latent + 1
    assert run.manifest["iterations"] == SMALL.iterations
    assert run.manifest["objective_evaluations"] == evaluations
    assert run.manifest["forward_passes"] == evaluations
    assert run.manifest["backward_passes"] == 0
    assert progress["autoencoder"][-1] == (SMALL.ae_epochs, SMALL.ae_epochs)
    assert len(progress["autoencoder"]) == SMALL.ae_epochs
    assert progress["bayesian optimisation"][-1] == (SMALL.iterations, SMALL.iterations)
    assert len(progress["bayesian optimisation"]) == SMALL.iterations


def test_fingerprints_lie_on_the_lattice_and_codes_in_the_box(
    run: FingerprintSet, target: nn.Module
) -> None:
    assert torch.equal(on_lattice(run.x), run.x)
    assert float(run.x.min()) >= 0.0
    assert float(run.x.max()) <= 1.0
    assert torch.equal(run.labels, predict(target, run.x))
    codes = torch.tensor(run.manifest["latent_codes"])
    assert codes.shape == (N, SMALL.latent)
    assert float(codes.abs().max()) <= SMALL.bound
    assert len(set(run.source_indices.tolist())) == N


def test_same_seed_same_fingerprints(target: nn.Module, sources: ImageSet, pools: Pools) -> None:
    params = SsfBoParams(latent=3, ae_hidden=32, ae_epochs=3, iterations=4, candidates=32)
    runs = [
        SsfBo(params).generate(target, sources, n=4, seed=seed, context=SearchContext(pools=pools))
        for seed in (1, 1, 2)
    ]
    assert torch.equal(runs[0].images, runs[1].images)
    assert runs[0].manifest["latent_codes"] == runs[1].manifest["latent_codes"]
    assert not torch.equal(runs[0].images, runs[2].images)


def test_rgb_images_and_missing_pools_are_refused(
    target: nn.Module, sources: ImageSet, pools: Pools
) -> None:
    rgb = ImageSet(sources.images.repeat(1, 3, 1, 1), sources.labels)
    with pytest.raises(GenerationError, match="1-channel"):
        SsfBo(SMALL).generate(target, rgb, n=2, seed=0, context=SearchContext(pools=pools))
    with pytest.raises(GenerationError, match=r"SearchContext\(pools=\.\.\.\)"):
        SsfBo(SMALL).generate(target, sources, n=2, seed=0)


def test_params_collect_every_problem() -> None:
    with pytest.raises(ValueError, match=r"latent.*bound.*local_share") as err:
        SsfBoParams(latent=0, bound=-1.0, local_share=1.5)
    assert "SsfBoParams" in str(err.value)
    with pytest.raises(ValueError, match="iterations"):
        SsfBoParams(iterations=-1)
    assert SsfBoParams().n_init == SsfBoParams().latent + 1
