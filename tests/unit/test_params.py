import math

import pytest

from la_edge import GenerationParams, InvalidParameterError


def test_defaults_are_the_papers():
    p = GenerationParams()
    assert p.ratio == 2.0 and p.plausibility_top_p == 0.8
    assert p.top_k == 0 and p.top_p == 1.0 and p.min_p == 0.0 and p.repeat_penalty == 1.0


def test_mask_temperature_resolution():
    assert GenerationParams(temperature=0.0).mask_temperature == 1.0
    assert GenerationParams(temperature=0.5).mask_temperature == 0.5
    assert GenerationParams(temperature=0.5, plausibility_temperature=2.0).mask_temperature == 2.0


def test_frozen():
    p = GenerationParams()
    with pytest.raises(Exception):
        p.ratio = 3.0  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, needle", [
    ({"ratio": math.nan}, "finite"),
    ({"ratio": math.inf}, "finite"),
    ({"ratio": 1e6}, "[-1, 100]"),
    ({"ratio": -5}, "[-1, 100]"),
    ({"ratio": "2"}, "number"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"plausibility_top_p": 0.0}, "plausibility_top_p"),
    ({"plausibility_temperature": 0.0}, "plausibility_temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "integer"),
    ({"min_p": 2.0}, "min_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"seed": -1}, "seed"),
    ({"stop": ("",)}, "stop"),
    ({"stop": ("a",) * 17}, "stop: at most 16 stop strings, got 17"),
    ({"stop": ("x" * 513,)}, "stop: each stop string must be at most 512 characters, got one of 513"),
    ({"stop": ("ok", 5)}, "stop: each stop string must be a non-empty string"),
    ({"stop": 5}, "stop must be a string or a list of strings"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"repeat_penalty": 0.0}, "repeat_penalty"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": -1.0}, "timeout"),
    ({"timeout": math.inf}, "timeout"),
    ({"timeout": math.nan}, "timeout"),
    ({"timeout": "5"}, "timeout"),
    ({"timeout": True}, "timeout"),
])
def test_bad_values_are_rejected_with_a_message(kwargs, needle):
    with pytest.raises(InvalidParameterError) as e:
        GenerationParams(**kwargs)
    assert needle in str(e.value)


def test_timeout_is_seconds_or_none():
    assert GenerationParams().timeout is None
    assert GenerationParams(timeout=2).timeout == 2.0 and GenerationParams(timeout=0.05).timeout == 0.05


def test_stop_string_becomes_tuple():
    assert GenerationParams(stop="###").stop == ("###",)
    assert GenerationParams(stop=None).stop == () and GenerationParams(stop=["a", "b"]).stop == ("a", "b")


def test_stop_at_its_limits_passes():
    assert len(GenerationParams(stop=[chr(65 + i) * 512 for i in range(16)]).stop) == 16
