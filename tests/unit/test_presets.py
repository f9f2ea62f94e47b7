"""Presets: --preset parsing, the presets file, model ids and the order in which principles are chosen."""

import pytest

from la_edge import InvalidParameterError
from la_edge.faces.presets import (Steering, UnknownModelError, check_name, load_presets_file, merge_presets,
                                   parse_preset, with_ratio)
from la_edge.faces.principles import DEFAULT_RATIO, Principle, PrincipleSpec

FRENCH = PrincipleSpec((Principle("Answer in French.", 3.0),))
BRIEF = PrincipleSpec((Principle("Be brief.", DEFAULT_RATIO),))


@pytest.mark.parametrize("text, name, principle, ratio", [
    ("french=Answer in French.", "french", "Answer in French.", DEFAULT_RATIO),
    ("french=Answer in French.@3", "french", "Answer in French.", 3.0),
    ("mail=Write to a@b.com", "mail", "Write to a@b.com", DEFAULT_RATIO),  # '@' not before a number
    ("x-1.b_c = Be brief. @0.5", "x-1.b_c", "Be brief.", 0.5),
    ("eq=a = b", "eq", "a = b", DEFAULT_RATIO),
])
def test_parse_preset(text, name, principle, ratio):
    n, spec = parse_preset(text)
    assert n == name and spec.single == Principle(principle, ratio)


@pytest.mark.parametrize("text, needle", [
    ("french", "NAME=TEXT"), ("=Answer.", "preset name"), ("fr ench=x", "preset name"),
    ("latest=x", "taken"), ("a:b=x", "separator"), ("french=", "non-empty"), ("french=   @2", "non-empty"),
    ("french=x@200", "french: ratio: must be a finite number"), ("-x=y", "preset name"), ("x" * 65 + "=y", "preset name"),
])
def test_bad_preset_flag_is_a_clear_error(text, needle):
    with pytest.raises(InvalidParameterError, match=needle):
        parse_preset(text)


def test_separator_may_change():
    assert parse_preset("a.b=x")[0] == "a.b"
    with pytest.raises(InvalidParameterError, match="separator"):
        parse_preset("a.b=x", separator=".")
    assert Steering("m", {"a": BRIEF}, separator="/").ids() == ["m", "m/a"]
    with pytest.raises(InvalidParameterError, match="separator"):
        Steering("m", separator="")


def test_presets_file_holds_several_principles_avoid_and_schedule(tmp_path):
    f = tmp_path / "presets.toml"
    f.write_text('[presets.french]\nprinciples = [{text = "Answer in French.", ratio = 3}]\n\n'
                 '[presets.kind]\nprinciples = ["Be kind.", {text = "Be brief.", weight = 2}]\n'
                 'avoid = [{text = "Use jargon.", ratio = 1.5}]\nratio_schedule = "adaptive"\n')
    presets = load_presets_file(str(f), default_ratio=4.0)
    assert list(presets) == ["french", "kind"] and presets["french"] == FRENCH
    kind = presets["kind"]
    assert [(p.text, p.ratio, p.weight) for p in kind.principles] == [("Be kind.", 4.0, 1.0), ("Be brief.", 4.0, 2.0)]
    assert kind.avoid[0].ratio == 1.5 and kind.adaptive and kind.k == 4


@pytest.mark.parametrize("text, needle", [
    ("[presets.a]\nprinciples = 3\n", "presets.a: principles"),
    ("[presets.a]\nprinciple = 'x'\n", "presets.a: unknown key 'principle'"),
    ("[presets.a]\navoid = ['x']\n", "presets.a"),
    ("[presets.a]\n", "presets.a: give at least one principle"),
    ("[presets.latest]\nprinciples = ['x']\n", "taken"),
    ("principles = ['x']\n", "unknown key 'principles'"),
    ("presets = 3\n", "at least one"),
    ("[presets\n", "not valid TOML"),
])
def test_bad_presets_file_names_the_file_the_preset_and_the_key(tmp_path, text, needle):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(InvalidParameterError, match=needle) as e:
        load_presets_file(str(f))
    assert str(f) in str(e.value)


def test_missing_presets_file():
    with pytest.raises(InvalidParameterError, match="cannot read the presets file"):
        load_presets_file("/nonexistent/p.toml")


def test_a_name_given_twice_is_an_error():
    with pytest.raises(InvalidParameterError, match="'french' is given twice"):
        merge_presets({"french": FRENCH}, {"french": BRIEF})


def test_model_ids_and_lookup():
    st = Steering("smollm2", {"french": FRENCH, "brief": BRIEF})
    assert st.ids() == ["smollm2", "smollm2:french", "smollm2:brief"]
    assert st.preset("smollm2:french") is FRENCH
    for plain in (None, "", "smollm2", "smollm2:latest", "gpt-4o", "llama3:8b"):  # as the server always took
        assert st.preset(plain) is None
    with pytest.raises(UnknownModelError) as e:
        st.preset("smollm2:german")
    assert e.value.valid == st.ids() and "smollm2:french" in str(e.value)


def test_precedence_system_then_preset_then_default():
    default = PrincipleSpec((Principle("Be polite.", 1.0),))
    st = Steering("m", {"french": FRENCH}, default=default, default_ratio=2.5)
    sys_msgs = [{"role": "system", "content": "Answer in Latin."}, {"role": "user", "content": "hi"}]
    user = sys_msgs[1:]
    assert st.choose("m:french", sys_msgs, None, None) == (FRENCH, sys_msgs)  # system mode off
    assert st.choose("m", sys_msgs, None, None) == (default, sys_msgs)
    spec, rest = st.choose("m:french", sys_msgs, "system", None)  # system message > preset
    assert spec.single == Principle("Answer in Latin.", 2.5) and rest == user
    assert st.choose("m:french", user, "system", None) == (FRENCH, user)  # no system message: the preset
    assert st.choose("m", sys_msgs, "none", None) == (default, sys_msgs)
    on = Steering("m", {"french": FRENCH}, from_system=True)
    assert on.choose("m:french", sys_msgs, None, 4.0)[0].single == Principle("Answer in Latin.", 4.0)
    assert on.choose("m:french", sys_msgs, "none", None) == (FRENCH, sys_msgs)  # the request turns it off
    assert st.choose("m:french", user, None, 7.0)[0].single.ratio == 7.0  # alignment_ratio overrides
    assert st.choose("m", None, "system", None) == (default, None)  # a completion has no system message
    with pytest.raises(UnknownModelError):
        st.choose("m:nope", sys_msgs, "system", None)


def test_with_ratio_sets_every_principle_and_keeps_avoid():
    spec = PrincipleSpec.from_fields({"principles": ["a", "b"], "avoid": [{"text": "c", "ratio": 1.5}]})
    out = with_ratio(spec, 6.0)
    assert [p.ratio for p in out.principles] == [6.0, 6.0] and out.avoid == spec.avoid
    assert with_ratio(spec, None) is spec and with_ratio(PrincipleSpec(), 3.0) == PrincipleSpec()


@pytest.mark.parametrize("args, needle", [
    (["--preset", "french"], "NAME=TEXT"), (["--preset", "a=x", "--preset", "a=y"], "given twice"),
    (["--preset", "latest=x"], "taken"), (["--preset", "a.b=x", "--preset-separator", "."], "separator"),
    (["--presets-file", "/nonexistent.toml"], "cannot read the presets file"),
    (["--principle-from", "user"], "invalid choice"),
])
def test_serve_refuses_bad_preset_flags_before_loading(args, needle, capsys):
    from la_edge.faces.cli import main

    try:
        code = main(["serve", "--model", "/nonexistent/model.gguf", *args])
    except SystemExit as exc:  # argparse
        code = exc.code
    assert code == 2 and needle in capsys.readouterr().err
