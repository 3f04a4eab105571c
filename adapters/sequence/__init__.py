"""The DNA sequence adapter: FASTA, sequence tables or BED + reference through tokenised or
one-hot models, with rows on base-pair coordinates.

One module per thing it owns: ``adapter`` (:class:`SequenceAdapter`: windows, stitching,
rows on the genome), ``inputs`` (FASTA files, tables of sequences, BED intervals read from
an indexed reference), ``tokenizers`` (k-mer, character, byte and one-hot encoders, each
with the span of bases a token covers), ``enformer`` (enformer-pytorch models from a local
directory).
"""

from .adapter import SequenceAdapter, plan_windows
from .enformer import load_enformer, save_enformer
from .inputs import FastaIndex, Record, read_fasta, records_from, reverse_complement
from .tokenizers import ByteTokenizer, CharTokenizer, KmerTokenizer, OneHotEncoder, tokenizer_for

__all__ = [
    "SequenceAdapter", "plan_windows", "load_enformer", "save_enformer", "FastaIndex", "Record",
    "read_fasta", "records_from", "reverse_complement", "KmerTokenizer", "CharTokenizer",
    "ByteTokenizer", "OneHotEncoder", "tokenizer_for",
]
