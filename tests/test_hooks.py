import gc
import weakref

import pytest
import torch
from jobs import tiny_bert
from torch import nn

from bioviz.hooks import capture, layer_names, resolve_layers, select_tensor


@pytest.fixture(scope="module")
def bert():
    return tiny_bert()


def _ids():
    ids = torch.randint(1, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_capture_matches_model_hidden_states(bert):
    with torch.no_grad(), capture(bert, ["encoder.layer.0", "encoder.layer.1"]) as cap:
        out = bert(**_ids(), output_hidden_states=True)
        acts = cap.pop()
    # hidden_states[i + 1] is the output of layer i
    torch.testing.assert_close(acts["encoder.layer.0"], out.hidden_states[1])
    torch.testing.assert_close(acts["encoder.layer.1"], out.hidden_states[2])


def test_glob_star_stays_inside_one_name_part(bert):
    assert resolve_layers(bert, "encoder.layer.*") == ["encoder.layer.0", "encoder.layer.1"]
    deep = resolve_layers(bert, "**.attention.output.dense")
    assert deep == ["encoder.layer.0.attention.output.dense", "encoder.layer.1.attention.output.dense"]
    assert resolve_layers(bert, "encoder.layer.[!0]") == ["encoder.layer.1"]


def test_unknown_layer_lists_close_matches(bert):
    with pytest.raises(ValueError, match=r"encoder\.layr\.1.*close matches: encoder\.layer\.1"):
        resolve_layers(bert, "encoder.layr.1")
    with pytest.raises(ValueError, match="at least one"):
        resolve_layers(bert, [])


def test_hooks_removed_on_error(bert):
    modules = [bert.encoder.layer[0], bert.encoder.layer[1]]
    before = [len(m._forward_hooks) for m in modules]  # transformers may hook layers itself
    with pytest.raises(RuntimeError, match="boom"):
        with capture(bert, "encoder.layer.*"):
            assert [len(m._forward_hooks) for m in modules] == [b + 1 for b in before]
            raise RuntimeError("boom")
    assert [len(m._forward_hooks) for m in modules] == before


def test_inputs_capture_what_the_module_receives(bert):
    with torch.no_grad(), capture(bert, "encoder.layer.1", inputs=True) as cap:
        out = bert(**_ids(), output_hidden_states=True)
        got = cap.pop()["encoder.layer.1"]
    torch.testing.assert_close(got, out.hidden_states[1])


def test_output_rule_tuple_dict_modeloutput():
    t = torch.arange(3.0)
    assert select_tensor((None, t, t + 1)) is t
    assert select_tensor({"logits": t + 1, "last_hidden_state": t}) is t
    assert select_tensor({"a": "x", "b": t}) is t
    assert select_tensor((t, t + 1), select=1)[0] == 1
    with pytest.raises(TypeError, match="select="):
        select_tensor(("a", "b"))


def test_capture_keeps_no_reference_after_pop():
    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return {"features": self.lin(x), "label": "x"}

    model = Dict()
    with capture(model, "lin") as cap:
        model(torch.randn(2, 4))
        ref = weakref.ref(cap.pop()["lin"])
        gc.collect()
        assert ref() is None  # nothing in bioviz holds the batch's activations
        with pytest.raises(RuntimeError, match="did not run"):
            cap.pop()


def test_layer_names_depth(bert):
    assert "encoder" in layer_names(bert, max_depth=1)
    assert all(n.count(".") < 2 for n in layer_names(bert, max_depth=2))
    assert "encoder.layer.0.attention.self.query" in layer_names(bert)
