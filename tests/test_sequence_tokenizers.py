"""DNA tokenisers against hand-worked examples of each model family's published rule."""

from __future__ import annotations

import numpy as np
import pytest

from bioviz.adapters.sequence import plan_windows
from bioviz.adapters.sequence.inputs import reverse_complement
from bioviz.adapters.sequence.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    KmerTokenizer,
    OneHotEncoder,
)


def tokens(tok, seq):
    return [t for t, _, _ in tok.tokenize(seq)]


def test_kmer_rule_nucleotide_transformer_examples():
    # the two examples in nucleotide_transformer.tokenizers.NucleotidesKmersTokenizer (k=5)
    k5 = KmerTokenizer(k=5, prepend_cls=False)
    assert tokens(k5, "ATCGAATGGCGATGCAC") == ["ATCGA", "ATGGC", "GATGC", "A", "C"]
    assert tokens(k5, "ATCGAATNGGCGATGCAC") == ["ATCGA", "A", "T", "N", "GGCGA", "TGCAC"]
    # NT v1 (k=6): <cls> first; the 6-mer grid restarts after each N; spans in the input
    k6 = KmerTokenizer()
    out = k6.tokenize("ACGTACGTANNCCCCCCG")
    assert out == [("<cls>", -1, -1), ("ACGTAC", 0, 6), ("G", 6, 7), ("T", 7, 8), ("A", 8, 9),
                   ("N", 9, 10), ("N", 10, 11), ("CCCCCC", 11, 17), ("G", 17, 18)]


def test_kmer_ids_original_order_and_vocab_file(tmp_path):
    k6 = KmerTokenizer()
    ids, starts, ends = k6.encode("AAAAAATTTTTTGGGGGGA")
    # <unk> <pad> <mask> <cls>, then 6-mers over A T C G in product order, then A T C G N, <eos> <bos>
    assert ids.tolist() == [3, 4, 4 + 1365, 4 + 4095, 4 + 4096]
    assert len(k6.vocab) == 4107 and k6.vocab["N"] == 4104 and k6.vocab["<bos>"] == 4106
    assert starts.tolist() == [-1, 0, 6, 12, 18] and ends.tolist() == [-1, 6, 12, 18, 19]
    (tmp_path / "vocab.txt").write_text("\n".join(["<pad>", "<cls>", "<unk>", "A", "T", "C", "G", "N", "AAAAAA"]) + "\n")
    small = KmerTokenizer(vocab=tmp_path / "vocab.txt")
    assert small.encode("AAAAAAC")[0].tolist() == [1, 8, 5]


def test_kmer_iupac_and_case():
    k6 = KmerTokenizer()
    with pytest.raises(ValueError, match="'R' at position 3"):
        k6.encode("ACGRACGT", name="seq1")
    assert tokens(KmerTokenizer(iupac="N"), "ACGRACGT") == ["<cls>", "A", "C", "G", "N", "A", "C", "G", "T"]
    assert tokens(k6, "acgtac") == ["<cls>", "ACGTAC"]  # soft-masked bases are read upper-case
    with pytest.raises(ValueError, match="'-'"):
        KmerTokenizer(iupac="N").encode("ACG-T")


def test_char_tokenizers_hyenadna_and_caduceus():
    hy = CharTokenizer("hyenadna")
    ids, starts, _ = hy.encode("ACGTNRa")
    # A C G T → 7 8 9 10; N → [PAD] 4 (HyenaDNA pretraining); R and lower-case a → [UNK] 6; [SEP] 1
    assert ids.tolist() == [7, 8, 9, 10, 4, 6, 6, 1]
    assert starts.tolist() == [0, 1, 2, 3, 4, 5, 6, -1]
    assert CharTokenizer("hyenadna", n_as_pad=False).encode("N")[0].tolist() == [11, 1]
    cad = CharTokenizer("caduceus")
    assert cad.encode("acgtnR")[0].tolist() == [7, 8, 9, 10, 11, 6, 1]  # upper-cased; N kept
    renumbered = CharTokenizer("caduceus", vocab={"[SEP]": 2, "[PAD]": 7, "[UNK]": 9, "A": 10, "C": 11, "G": 12, "T": 13, "N": 14})
    assert renumbered.encode("ACX")[0].tolist() == [10, 11, 9, 2]


def test_byte_tokenizer_evo():
    ids, starts, _ = ByteTokenizer().encode("ACGTn")
    assert ids.tolist() == [65, 67, 71, 84, 78]
    assert ByteTokenizer(prepend_eod=True).encode("A")[0].tolist() == [0, 65]
    assert ByteTokenizer(uppercase=False).encode("a")[0].tolist() == [97]


def test_onehot_enformer_rule():
    x = OneHotEncoder().encode("ACGTNRa", length=9)
    expect = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
                       [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [.25] * 4, [.25] * 4], dtype=np.float32)
    np.testing.assert_array_equal(x, expect)
    enformer = pytest.importorskip("enformer_pytorch")
    np.testing.assert_array_equal(OneHotEncoder().encode("ACGTNRacgtn"), enformer.str_to_one_hot("ACGTNRacgtn").numpy())


def test_reverse_complement_and_windows():
    assert reverse_complement("AACGTNR") == "YNACGTT"
    for length, window, overlap in [(1000, 300, 50), (301, 300, 100), (250, 300, 0), (1000, 100, 0)]:
        plan = plan_windows(length, window, overlap)
        owned = np.zeros(length, dtype=int)
        for s, e, lo, hi in plan:
            assert 0 <= s <= lo < hi <= e <= length and e - s == min(window, length)
            owned[lo:hi] += 1
        assert (owned == 1).all()  # every base belongs to exactly one window
        assert plan[-1][1] == length
