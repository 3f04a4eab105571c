"""Real pretrained weights: AntiBERTy (antiberty==0.1.3 ships an antibody BERT in its wheel).

bioviz hooks the model through the generic transformers path (``HFAdapter`` on the
package's checkpoint directory, loaded as a ``BertModel``) and compares what it stores with
the package's own ``AntiBERTyRunner.embed``. That runner needs transformers < 5 (its model
class predates transformers 5's loading API), so when this environment has transformers 5
the reference embeddings come from a second interpreter: ``$BIOVIZ_ANTIBERTY_PYTHON``, or
``.venv-antiberty/bin/python`` in the repository, with ``transformers<5`` and
``antiberty==0.1.3`` installed. Without either, the comparison is skipped (with the reason).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

antiberty = pytest.importorskip("antiberty", reason="antiberty==0.1.3 (the test's source of real weights)")

import transformers  # noqa: E402

import bioviz  # noqa: E402
from bioviz.adapters.hf import HFAdapter  # noqa: E402

TRAINED = Path(antiberty.__file__).parent / "trained_models"
CHECKPOINT = TRAINED / "AntiBERTy_md_smooth"
SEQUENCES = [
    "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSR",
    "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPT",
    "QVQLQQSGAELVRPGASVKLSCKASGYTFTSYWMHWVKQRPGQGLEWIGEIDPSDSYTNYNQKFKG",
]
LAYERS = {"encoder.layer.3": 4, "encoder.layer.7": 8}  # hooked module → AntiBERTy hidden_layer index
REFERENCE = """
import sys, numpy as np, antiberty
runner = antiberty.AntiBERTyRunner()
seqs = sys.argv[2].split(",")
for layer in map(int, sys.argv[3].split(",")):
    embs = runner.embed(seqs, hidden_layer=layer)
    np.savez(f"{sys.argv[1]}/layer{layer}.npz", *[e.cpu().numpy() for e in embs])
"""


def reference_python() -> str | None:
    if int(transformers.__version__.split(".")[0]) < 5:
        return sys.executable
    for cand in (os.environ.get("BIOVIZ_ANTIBERTY_PYTHON"),
                 str(Path(__file__).resolve().parents[1] / ".venv-antiberty" / "bin" / "python")):
        if cand and Path(cand).is_file():
            return cand
    return None


def tokenizer():
    # the package's vocabulary (25 tokens: specials + 20 amino acids), residues space-separated
    return transformers.BertTokenizer.from_pretrained(TRAINED, do_lower_case=False)


def test_generic_hf_path_matches_antiberty_embeddings(tmp_path):
    python = reference_python()
    if python is None:
        if os.environ.get("CI"):  # `make test` builds .venv-antiberty: in CI a skip would hide a failure
            pytest.fail("no reference interpreter: .venv-antiberty is missing (make test creates it)")
        pytest.skip("AntiBERTyRunner needs transformers<5: set BIOVIZ_ANTIBERTY_PYTHON to a python with "
                    "transformers<5 and antiberty==0.1.3 (or create .venv-antiberty)")
    subprocess.run([python, "-c", REFERENCE, str(tmp_path), ",".join(SEQUENCES),
                    ",".join(map(str, LAYERS.values()))], check=True, capture_output=True, timeout=300)
    ada = HFAdapter(CHECKPOINT, tokenizer(), model_class="BertModel", preprocess=" ".join)
    assert ada.model.config.num_hidden_layers == 8 and ada.model.config.hidden_size == 512
    table = {"sequence": SEQUENCES, "subject_id": ["p1", "p1", "p2"], "chain": ["heavy", "light", "heavy"]}
    import pandas as pd

    store = bioviz.extract(ada, pd.DataFrame(table), list(LAYERS), tmp_path / "store", batch_size=2, progress=False)
    obs = store.obs
    assert list(obs.groupby("sample_id", sort=True).size()) == [len(s) + 2 for s in SEQUENCES]  # + [CLS], [SEP]
    assert obs.token.iloc[0] == "[CLS]" and "".join(obs.token.iloc[1:1 + len(SEQUENCES[0])]) == SEQUENCES[0]
    assert set(obs.chain) == {"heavy", "light"} and obs.subject_id.iloc[-1] == "p2"
    for layer, index in LAYERS.items():
        want = np.load(tmp_path / f"layer{index}.npz")
        rows = store.array(layer)[:]
        for i, key in enumerate(want.files):
            got = rows[(obs.sample_id == str(i)).to_numpy()]
            np.testing.assert_allclose(got, want[key], rtol=1e-4, atol=1e-4)


def test_wrong_tokenizer_is_refused():
    # transformers 5 ignores BertTokenizer(vocab_file=...): every residue would become [UNK]
    wrong = transformers.BertTokenizer(vocab_file=str(TRAINED / "vocab.txt"), do_lower_case=False)
    ada = HFAdapter(CHECKPOINT, tokenizer(), model_class="BertModel", preprocess=" ".join)
    assert len(ada.dataset(SEQUENCES)) == 3
    if len(wrong) > 5:
        pytest.skip("this transformers honours vocab_file; the wrong-tokenizer case does not arise")
    ada = HFAdapter(CHECKPOINT, wrong, model_class="BertModel", preprocess=" ".join)
    with pytest.raises(ValueError, match=r"maps 100% of the input's tokens to '\[UNK\]'"):
        ada.dataset(SEQUENCES)
