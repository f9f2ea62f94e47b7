"""Principle weights: any finite weights normalise without overflow, and a weight too small to
survive normalisation is refused naming the field the user sent (spec, HTTP body, principles file)."""

import math

import pytest

from la_edge.decoding.combination import MIX_MIN, Combination
from la_edge.decoding.params import GenerationParams
from la_edge.faces.openai_schema import CompletionRequest, RequestError
from la_edge.faces.principles import Principle, PrincipleSpec, SpecError, load_file

BIG = 1.7976931348623157e308  # the largest double


def spec(*weights):
    return PrincipleSpec(tuple(Principle(f"p{i}", 2.0, w) for i, w in enumerate(weights)))


@pytest.mark.parametrize("weights, mix", [
    ((1e308, 1e308), (0.5, 0.5)),
    ((BIG, BIG, BIG, BIG), (0.25,) * 4),
    ((BIG, 0.0), (1.0, 0.0)),
    ((BIG, BIG / 4), (0.8, 0.2)),
])
def test_huge_weights_are_accepted_and_normalise_to_the_same_mix(weights, mix):
    s = spec(*weights)  # before: OverflowError from math.fsum (an HTTP 500, a CLI traceback)
    c = Combination.compose([p.ratio for p in s.principles], [p.weight for p in s.principles])
    assert c.mix[:len(weights)] == pytest.approx(mix, rel=1e-15) and math.isclose(math.fsum(c.mix), 1.0)


@pytest.mark.parametrize("weights, bad", [((1.0, 1e-31), 1), ((1e300, 1e-300), 1), ((1e-40, 1.0, 1.0), 0)])
def test_a_weight_below_mix_min_of_the_sum_names_its_field(weights, bad):
    with pytest.raises(SpecError) as err:
        spec(*weights)
    assert err.value.field == f"principles[{bad}].weight" and err.value.kind == "value"
    assert "mix" not in str(err.value) and "set it to 0" in str(err.value)


def test_weights_just_at_the_floor_and_zero_weights_are_accepted():
    spec(1.0, 0.0)  # 0 drops a principle's pull: it stays allowed
    c = Combination.compose((1.0, 1.0), (1.0, 2 * MIX_MIN))
    assert c.mix[1] >= MIX_MIN


def test_the_http_param_is_the_field_the_user_sent():
    body = CompletionRequest(prompt="hi", principles=[{"text": "a", "weight": 1.0}, {"text": "b", "weight": 1e-31}])
    with pytest.raises(RequestError) as err:
        body.spec(GenerationParams(), 8)
    assert err.value.status == 400 and err.value.param == "principles[1].weight"
    huge = CompletionRequest(prompt="hi", principles=[{"text": "a", "weight": 1e308}, {"text": "b", "weight": 1e308}])
    assert [p.weight for p in huge.spec(GenerationParams(), 8).principles] == [1e308, 1e308]


def test_the_principles_file_error_names_the_file_and_the_weight(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[[principles]]\ntext = "a"\nweight = 1.0\n[[principles]]\ntext = "b"\nweight = 1e-31\n')
    with pytest.raises(Exception, match=r"p\.toml: principles\[1\]\.weight: ") as err:
        load_file(str(path))
    assert isinstance(err.value, ValueError) and not isinstance(err.value, OverflowError)
    path.write_text('[[principles]]\ntext = "a"\nweight = 1e308\n[[principles]]\ntext = "b"\nweight = 1e308\n')
    assert len(load_file(str(path)).principles) == 2


def test_a_negative_at_zero_strength_gets_no_branch():
    from la_edge.runtime.branches import compose

    alone = compose([], [("N", None)], ("plain", None), [], None, [0.0])
    assert alone.k == 1 and alone.branches[0].text == "plain" and alone.combination == Combination.plain()
    with_p = compose([("P", None)], [("N", None), ("M", None)], ("plain", None), [2.0], None, [0.0, 1.5])
    assert [b.text for b in with_p.branches] == ["P", "M", "plain"]
    assert with_p.combination == Combination.compose((2.0,), None, (1.5,))
    with pytest.raises(Exception, match="avoid_ratios"):  # what is not zero is still checked
        compose([], [("N", None)], ("plain", None), [], None, [float("nan")])


def test_zero_strength_negatives_keep_every_check():
    from la_edge.runtime.branches import compose

    with pytest.raises(Exception, match="weights"):  # as before: weights without principles
        compose([], [("N", None)], ("plain", None), [], [1.0], [0.0])
