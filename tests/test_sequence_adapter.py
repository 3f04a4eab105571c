"""DNA adapter: inputs (FASTA, table, BED + reference), windows stitched to base pairs, and
every supported architecture saved to a directory and loaded back through the user loader."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import bioviz
from bioviz.adapters.sequence import SequenceAdapter
from bioviz.adapters.sequence.inputs import FastaIndex, reverse_complement
from bioviz.adapters.sequence.tokenizers import KmerTokenizer

RNG = np.random.default_rng(0)


def random_dna(n):
    return "".join(RNG.choice(list("ACGT"), n))


@pytest.fixture(scope="module")
def nt_dir(tmp_path_factory):
    """Nucleotide Transformer v1 architecture (EsmForMaskedLM) with its vocab.txt."""
    from transformers import EsmConfig, EsmForMaskedLM

    d = tmp_path_factory.mktemp("nt")
    vocab = sorted(KmerTokenizer().vocab, key=KmerTokenizer().vocab.get)
    torch.manual_seed(0)
    cfg = EsmConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=36, pad_token_id=1, mask_token_id=2,
                    position_embedding_type="absolute", token_dropout=False)
    EsmForMaskedLM(cfg).save_pretrained(d)
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return d


def write_fasta(path, records, width=60):
    with open(path, "w") as f:
        for name, seq in records.items():
            f.write(f">{name} description\n")
            for i in range(0, len(seq), width):
                f.write(seq[i:i + width] + "\n")


def test_nt_windows_stitch_to_base_pairs(tmp_path, nt_dir):
    seq = random_dna(700)
    write_fasta(tmp_path / "x.fa", {"chr7:1000-1700": seq, "short": seq[:50]})
    ada = SequenceAdapter.from_hf(nt_dir, "nt", overlap=48)
    assert ada.window == 32 * 6 and ada.max_tokens == 34  # ESM numbers positions from pad+1; 2 spare
    store = bioviz.extract(ada, tmp_path / "x.fa", "esm.encoder.layer.1", tmp_path / "s", batch_size=3, progress=False)
    obs = store.obs
    long = obs[obs.seq_id == "chr7:1000-1700"]
    assert (long.chrom == "chr7").all() and (long.strand == "+").all()
    assert long.start.min() == 1000 and long.end.max() == 1700
    for _, g in long.groupby("window"):
        assert (np.diff(g.start.to_numpy()) == 6).all()  # a window's tokens tile its stretch
    # stitched without holes; where two windows' 6-mer grids meet, rows overlap by < 6 bp
    covered = np.zeros(1700, dtype=int)
    for a, b in zip(long.start, long.end):
        covered[a:b] += 1
    assert (covered[1000:] >= 1).all() and (covered[1000:] <= 2).all()
    # each junction: last kept token of one window starts before the midpoint, the next window's
    # first ends after it, so they share less than 2 × 6 bp
    assert (covered[1000:] == 2).sum() < 12 * 4
    assert long.window.nunique() == 5  # starts 0, 144, 288, 432 and 508 (the last aligned to the end)
    # every row equals the model run directly on its window, at that token
    rows = store.array()[:]
    tok = ada.tokenizer
    for w in range(5):
        win = ada.windows[w]
        ids, starts, _ = tok.encode(seq[win.start:win.end])
        with torch.no_grad(), bioviz.capture(ada.model, "esm.encoder.layer.1") as cap:
            ada.model.esm(input_ids=torch.from_numpy(ids)[None])
            direct = cap.pop()["esm.encoder.layer.1"][0]
        sel = long[long.window == w]
        np.testing.assert_allclose(rows[sel.index], direct[sel.token_index.to_numpy()].numpy(), atol=2e-5)
        assert (starts[sel.token_index.to_numpy()] + win.start + 1000 == sel.start.to_numpy()).all()
    short = obs[obs.seq_id == "short"]
    assert short.start.min() == 0 and short.end.max() == 50 and len(short) == 8 + 2  # 8 six-mers + 2 bases


def test_bed_with_reference_both_strands(tmp_path, nt_dir):
    genome = {"chrA": random_dna(500), "chrB": random_dna(130)}
    write_fasta(tmp_path / "ref.fa", genome, width=50)
    (tmp_path / "peaks.bed").write_text("chrA\t100\t160\tp1\t0\t+\nchrB\t10\t70\tp2\t0\t-\n")
    idx = FastaIndex(tmp_path / "ref.fa")
    assert idx.fetch("chrA", 45, 105) == genome["chrA"][45:105]  # across line breaks
    (tmp_path / "ref.fa.fai").write_text("".join(f"{k}\t{v[0]}\t{v[1]}\t{v[2]}\t{v[3]}\n" for k, v in idx.index.items()))
    assert FastaIndex(tmp_path / "ref.fa").fetch("chrB", 0, 130) == genome["chrB"]
    ada = SequenceAdapter.from_hf(nt_dir, "nt", reference=tmp_path / "ref.fa", subject_id="donor1")
    cells = ada.dataset(tmp_path / "peaks.bed")
    batch = ada.collate([cells[i] for i in range(len(cells))])
    minus = ada.tokenizer.decode(batch.inputs["input_ids"][1, 1:11].tolist())
    assert "".join(minus) == reverse_complement(genome["chrB"][10:70])
    store = bioviz.extract(ada, tmp_path / "peaks.bed", "esm.encoder.layer.0", tmp_path / "s", progress=False)
    obs = store.obs
    p2 = obs[obs.seq_id == "p2"]
    # minus strand: the first token covers the interval's last 6 bp on the genome
    assert (p2.strand == "-").all() and p2.iloc[0].start == 64 and p2.iloc[0].end == 70 and p2.end.max() == 70
    assert p2.start.min() == 10 and (obs.subject_id == "donor1").all()
    # a long minus-strand interval: each window is read from the reference on its own
    (tmp_path / "long.bed").write_text("chrA\t0\t500\tlong\t0\t-\n")
    wins = ada.dataset(tmp_path / "long.bed")
    assert len(wins) == 3
    b1 = ada.collate([1])
    rc = reverse_complement(genome["chrA"])
    assert "".join(ada.tokenizer.decode(b1.inputs["input_ids"][0, 1:].tolist())) == rc[192:384]
    st = bioviz.extract(ada, tmp_path / "long.bed", "esm.encoder.layer.0", tmp_path / "l", progress=False)
    covered = np.zeros(500, dtype=int)
    for a, b in zip(st.obs.start, st.obs.end):
        covered[a:b] += 1
    assert (covered >= 1).all()
    with pytest.raises(ValueError, match="not inside the reference"):
        (tmp_path / "bad.bed").write_text("chrA\t450\t600\n")
        ada.dataset(tmp_path / "bad.bed")


def test_table_input_and_errors(tmp_path, nt_dir):
    ada = SequenceAdapter.from_hf(nt_dir, "nt")
    table = pd.DataFrame({"sequence": [random_dna(60), random_dna(30)], "chrom": ["chr1", "chr2"],
                          "start": [100, 0], "end": [160, 30], "subject_id": ["s1", "s2"]})
    assert len(ada.dataset(table)) == 2
    bad = table.assign(end=[150, 30])
    with pytest.raises(ValueError, match=r"row 0 .*\(50 bp\) but its sequence has 60"):
        ada.dataset(bad)
    with pytest.raises(ValueError, match="needs reference="):
        ada.dataset(tmp_path / "x.bed")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        SequenceAdapter.from_hf(tmp_path, "nt")


def test_enformer_bins_and_channels_first_layers(tmp_path):
    enformer = pytest.importorskip("enformer_pytorch")
    from bioviz.adapters.sequence.enformer import save_enformer

    torch.manual_seed(0)
    model = enformer.Enformer.from_hparams(dim=48, depth=1, heads=2, output_heads=dict(human=6), target_length=8,
                                           num_downsamples=7, dim_divisible_by=8, attn_dim_key=8)
    save_enformer(model, tmp_path / "enf")
    seq = random_dna(3000)
    write_fasta(tmp_path / "x.fa", {"chr1:0-3000": seq})
    ada = SequenceAdapter.from_enformer(tmp_path / "enf", window=2048, overlap=1024)
    for k, v in model.state_dict().items():
        assert torch.equal(ada.model.state_dict()[k], v), k
    st = bioviz.extract(ada, tmp_path / "x.fa", "transformer", tmp_path / "t", progress=False)
    o = st.obs
    # windows [0, 2048) and [952, 3000) own [0, 1500) and [1500, 3000): 12 bins of 128 bp each
    assert ((o.end - o.start) == 128).all() and o.start.min() == 0 and o.end.max() == 3000
    assert o.groupby("window").size().tolist() == [12, 12]
    assert o[o.window == 1].start.min() == 952 + 4 * 128
    conv = bioviz.extract(ada, tmp_path / "x.fa", "conv_tower.0", tmp_path / "c", progress=False)
    assert ((conv.obs.end - conv.obs.start) == 4).all() and conv.dim() == 24  # [B, C, L] read channels-first
    crop = bioviz.extract(ada, tmp_path / "x.fa", "_heads.human", tmp_path / "h", progress=False)
    first = crop.obs[crop.obs.window == 0]
    assert first.start.min() == 512 and len(first) == 8  # the centre 8 bins of the 16 in a window
    with torch.no_grad():
        x = torch.from_numpy(ada.tokenizer.encode(seq[:2048]))[None]
        want = model.eval()(x)["human"][0]
    np.testing.assert_allclose(crop.array()[: len(first)], want[: len(first)].numpy(), atol=1e-5)


def test_char_and_byte_models_through_the_hf_loader(tmp_path):
    from transformers import BertConfig, BertForMaskedLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=130)).save_pretrained(tmp_path / "cad")
    MistralForCausalLM(MistralConfig(vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=200,
                                     head_dim=8)).save_pretrained(tmp_path / "evo")
    seq = random_dna(300)
    write_fasta(tmp_path / "x.fa", {"s": seq})
    cad = SequenceAdapter.from_hf(tmp_path / "cad", "caduceus", overlap=20)
    st = bioviz.extract(cad, tmp_path / "x.fa", "bert.encoder.layer.0", tmp_path / "c", progress=False)
    assert st.n_rows == 300 and ((st.obs.end - st.obs.start) == 1).all() and (st.obs.start.diff().dropna() == 1).all()
    evo = SequenceAdapter.from_hf(tmp_path / "evo", "evo", window=128, overlap=16)
    st = bioviz.extract(evo, tmp_path / "x.fa", "model.layers.0", tmp_path / "e", progress=False)
    assert st.n_rows == 300 and st.obs.start.tolist() == list(range(300))


def test_any_torch_module_with_token_ids(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 4))
    ada = SequenceAdapter(module, "hyenadna", window=100, overlap=10, call="ids")
    seq = random_dna(250)
    write_fasta(tmp_path / "x.fa", {"s": seq})
    st = bioviz.extract(ada, tmp_path / "x.fa", "1", tmp_path / "s", progress=False)
    assert st.n_rows == 250
    ids = ada.tokenizer.encode(seq)[0][:-1]
    with torch.no_grad():
        want = module(torch.from_numpy(ids))
    np.testing.assert_allclose(st.array()[:], want.numpy(), atol=1e-6)
