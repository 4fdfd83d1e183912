"""Image inputs in the request models and the family rules (no model loaded): field checks
naming the rule, unsupported kinds refused as unsupported_field, merge keys, step counts."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from gridgen import InvalidRequestError
from gridgen.diffusion.conditioning import input_merge_key, input_steps, strength_of, supported
from gridgen.diffusion.families import FLUX_DEV, SD3, SDXL
from gridgen.diffusion.families.flux import _Flux
from gridgen.inputs import input_data_url

IMAGE = input_data_url(Image.new("RGB", (64, 48), (10, 20, 30)))
MASK = input_data_url(Image.new("L", (64, 48), 255))
BASE = {"prompt": "p", "width": 64, "height": 64, "num_inference_steps": 10}


def _rules(family: Any, **fields: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidRequestError) as caught:
        family.validate({**BASE, **fields})
    return [(e.field, e.rule) for e in caught.value.errors]


@pytest.mark.parametrize("family", [SDXL, FLUX_DEV, SD3], ids=lambda f: f.name)
def test_bad_image_fields_name_the_field_and_the_rule(family: Any) -> None:
    assert _rules(family, image="not an image") == [("image", "image_base64")]
    assert _rules(family, strength=0.5) == [("strength", "requires_image")]
    assert _rules(family, mask=MASK) == [("mask", "requires_image")]
    assert _rules(family, image=IMAGE, strength=1.5) == [("strength", "less_than_equal")]
    assert _rules(family, image=IMAGE, strength="0.5") == [("strength", "value_error")]
    small = input_data_url(Image.new("L", (32, 32)))
    assert _rules(family, image=IMAGE, mask=small) == [("mask", "mask_size")]
    assert family.validate({**BASE, "image": IMAGE, "mask": MASK}).mask == MASK


def test_every_family_has_both_pipelines_in_the_installed_diffusers() -> None:
    assert all(supported(f, kind) for f in (SDXL, FLUX_DEV, SD3) for kind in ("img2img", "inpaint"))


def test_a_kind_a_family_lacks_is_an_unsupported_field() -> None:
    no_inpaint = _Flux("flux-x", "FLUX.1-x", FLUX_DEV.request_model, {}, 512)
    no_inpaint.image_pipelines = {"img2img": FLUX_DEV.image_pipelines["img2img"]}
    assert no_inpaint.validate({**BASE, "image": IMAGE}).image == IMAGE
    with pytest.raises(InvalidRequestError) as caught:
        no_inpaint.validate({**BASE, "image": IMAGE, "mask": MASK})
    (error,) = caught.value.errors
    assert (error.field, error.rule) == ("mask", "unsupported_field")
    assert "no inpainting pipeline" in error.message


def test_merge_keys_and_step_counts_follow_kind_and_strength() -> None:
    text, img = FLUX_DEV.validate(BASE), FLUX_DEV.validate({**BASE, "image": IMAGE})
    inpaint = FLUX_DEV.validate({**BASE, "image": IMAGE, "mask": MASK})
    assert input_merge_key(text) == () and input_merge_key(img) == ("img2img", 0.6)
    assert input_merge_key(inpaint) == ("inpaint", 1.0) and strength_of(inpaint) == 1.0
    assert len({FLUX_DEV.merge_key(r) for r in (text, img, inpaint)}) == 3
    # 10 steps at 0.6 and 0.25: FLUX.1 and SD3.5 keep 6 and 3 (they truncate what they skip),
    # SDXL 6 and 2 (it truncates what it runs)
    quarter = {**BASE, "image": IMAGE, "strength": 0.25}
    assert (input_steps(FLUX_DEV, img, 10), input_steps(FLUX_DEV, FLUX_DEV.validate(quarter), 10)) == (6, 3)
    assert (SDXL.image_steps(10, 0.6), SDXL.image_steps(10, 0.25)) == (6, 2)
    assert input_steps(FLUX_DEV, text, 10) == 10
