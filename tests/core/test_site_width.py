"""``Site(width=N)`` (issue #25): the width of an activation module that no sibling linear
layer sizes; written to files only when set, so older files and configs read as before."""

import pytest

import mixlight as ml
import mixlight.extend as mlx
from mixlight.site_planning import ModuleRecord, shape_for


def test_width_round_trips_and_is_written_only_when_set():
    plain = ml.Site("act", mlx.Vectors())
    assert "width" not in plain.to_dict()
    assert ml.Site.from_dict(plain.to_dict()) == plain  # a file written before the field
    sized = ml.Site("act", mlx.Vectors(), width=48)
    assert sized.to_dict()["width"] == 48 and ml.Site.from_dict(sized.to_dict()) == sized
    config = ml.AdapterConfig([sized], num_experts=2)
    assert ml.AdapterConfig.from_dict(config.to_dict()) == config
    for bad in (0, -1, 2.5, True, "48"):
        with pytest.raises(ValueError, match="Site.width"):
            ml.Site("act", mlx.Vectors(), width=bad)


def test_width_sizes_an_activation_without_a_consumer_and_must_agree_with_one():
    activation = ModuleRecord("Gelu")
    with pytest.raises(TypeError, match=r"cannot tell the width.*width=N"):
        shape_for("mlp.act", ml.Site("mlp.act", mlx.Vectors()), activation)
    shape = shape_for("mlp.act", ml.Site("mlp.act", mlx.Vectors(), width=48), activation)
    assert (shape.d_in, shape.d_out) == (48, 48)
    consumed = ModuleRecord("Gelu", consumer_in=64)
    assert shape_for("mlp.act", ml.Site("mlp.act", mlx.Vectors(), width=64), consumed).d_out == 64
    with pytest.raises(TypeError, match="gives width=48, but mlp.act has its consumer's input"):
        shape_for("mlp.act", ml.Site("mlp.act", mlx.Vectors(), width=48), consumed)
    linear = ModuleRecord("Linear", d_in=16, d_out=32, has_params=True)
    with pytest.raises(TypeError, match="gives width=48, but mlp.fc has its output width 32"):
        shape_for("mlp.fc", ml.Site("mlp.fc", mlx.Vectors(), width=48), linear)
