"""Both backends implement every member of the Backend protocol: callers never probe with getattr."""

import ast
import inspect

from la_edge.backends import Backend, BackendOptions, load_backend
from la_edge.backends.onnxrt import OnnxBackend


def _members():
    methods = {n for n, v in vars(Backend).items() if callable(v) and not n.startswith("_")}
    return set(Backend.__annotations__), methods


def test_llamacpp_backend_has_every_protocol_member(model_path):
    b = load_backend(model_path, "llama.cpp", BackendOptions(n_ctx=64, n_seq_max=1))
    try:
        attributes, methods = _members()
        assert {"reuse_block", "n_swa", "path", "options"} <= attributes and "seq_remove" in methods and "clear" not in methods
        assert [n for n in attributes | methods if not hasattr(b, n)] == []
        assert b.reuse_block == 16 and b.n_swa == 0 and b.path == model_path and b.options.n_seq_max == 1
    finally:
        b.close()


def test_onnx_backend_defines_every_protocol_member():
    # No exported model needed: methods on the class, attributes on the class or set in __init__.
    attributes, methods = _members()
    init = ast.parse(inspect.getsource(OnnxBackend.__init__).strip().replace("\n    ", "\n"))
    assigned = {t.attr for node in ast.walk(init) if isinstance(node, ast.Assign) for el in node.targets
                for t in (el.elts if isinstance(el, ast.Tuple) else [el])
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    assert [n for n in methods if not callable(getattr(OnnxBackend, n, None))] == []
    assert sorted(n for n in attributes if n not in assigned and not hasattr(OnnxBackend, n)) == []
    assert OnnxBackend.reuse_block == 16
