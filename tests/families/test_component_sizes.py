"""``bench/component_sizes.py``: the full-size random builds weigh what the published models do,
built on the meta device with no weights, and the offload arithmetic follows from the parts."""

from __future__ import annotations

import pytest

from helpers.bench import load_bench


def test_flux_parts_weigh_the_published_parameter_counts() -> None:
    """FLUX.1-dev: an 11.9 B-parameter transformer and T5-XXL's 4.76 B-parameter encoder."""
    report = load_bench("component_sizes").sizes("flux-random", "bfloat16")
    parts = report["components_gib"]
    assert parts["transformer"] * 2**30 / 2 == pytest.approx(11.9e9, rel=0.01)
    assert parts["text_encoder_2"] * 2**30 / 2 == pytest.approx(4.76e9, rel=0.01)
    assert report["offloaded_gib"] == pytest.approx(
        parts["text_encoder"] + parts["text_encoder_2"] + parts["vae"], abs=0.02)
    assert report["weights_resident_offloaded_peak_gib"] == pytest.approx(
        parts["transformer"] + parts["text_encoder_2"], abs=0.02)


def test_sd3_offload_peak_pairs_the_transformer_with_t5() -> None:
    report = load_bench("component_sizes").sizes("sd3-random", "bfloat16")
    parts = report["components_gib"]
    assert set(parts) == {"text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"}
    assert report["weights_resident_offloaded_peak_gib"] == pytest.approx(
        parts["transformer"] + parts["text_encoder_3"], abs=0.02)
    assert report["weights_resident_offloaded_peak_gib"] < report["weights_resident_gib"]
