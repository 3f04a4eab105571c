"""The DNA sequence adapter: FASTA, sequence tables or BED + reference through tokenised or
one-hot models, with rows on base-pair coordinates.

One module per thing it owns: ``adapter`` (:class:`SequenceAdapter`: windows, stitching,
rows on the genome), ``inputs`` (FASTA files, tables of sequences, BED intervals read from
an indexed reference), ``tokenizers`` (k-mer, character, byte and one-hot encoders, each
with the span of bases a token covers), ``enformer`` (enformer-pytorch models from a local
directory), ``evidence`` (the DNA where a feature fires, its motifs and their JASPAR
matches, sequence logos), ``demo`` (the small motif CNN that ships with the package) and
``study`` (the DNA demo study: synthetic subjects with planted JASPAR motifs).
"""

from .adapter import SequenceAdapter, plan_windows
from .demo import MotifCNN, demo_adapter, load_demo_model
from .enformer import load_enformer, save_enformer
from .evidence import draw_logo, motif_evidence, plot_motif_match, row_windows
from .inputs import FastaIndex, Record, read_fasta, records_from, reverse_complement
from .study import PlantedMotifs
from .tokenizers import ByteTokenizer, CharTokenizer, KmerTokenizer, OneHotEncoder, tokenizer_for

__all__ = [
    "SequenceAdapter", "plan_windows", "load_enformer", "save_enformer", "FastaIndex", "Record",
    "read_fasta", "records_from", "reverse_complement", "KmerTokenizer", "CharTokenizer",
    "ByteTokenizer", "OneHotEncoder", "tokenizer_for", "motif_evidence", "row_windows", "draw_logo",
    "plot_motif_match", "MotifCNN", "demo_adapter", "load_demo_model", "PlantedMotifs",
]
