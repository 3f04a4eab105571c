"""The single-cell adapters: AnnData cohorts (in memory or backed ``.h5ad``) through
Geneformer- and scGPT-style models, with rows per cell and/or per gene token.

One module per thing it owns: ``adapter`` (:class:`SingleCellAdapter`, what the model
families share: rows, pooling, the checks before a run), ``source`` (reading the expression
matrix a batch at a time, and the checks pass over it), ``genes`` (a cohort's gene
identifiers mapped onto a model's vocabulary), ``dicts`` (gene dictionaries from user files,
pickles unpickled restrictedly), ``geneformer`` (:class:`GeneformerAdapter`: rank-value
encoding into a BERT), ``scgpt`` (:class:`ScGPTAdapter` and :class:`ScGPTModel`: value
binning into scGPT's transformer), ``demo`` (the shipped demo model in ``demo_model/`` and
its data), ``study`` (the single-cell demo study's cohort: PBMC donors with a planted
interferon response, and its check).
"""

from .adapter import EXPRESSION, ROWS, SingleCellAdapter
from .demo import DEMO_DIR, demo_adapter, pbmc68k_counts
from .dicts import convert_to_json, load_mapping
from .geneformer import GeneformerAdapter, rank_value_encode
from .genes import GeneMapping, map_genes
from .scgpt import ScGPTAdapter, ScGPTModel, bin_values
from .source import CellSource, Survey, survey
from .study import PlantedInterferonPBMC

__all__ = [
    "SingleCellAdapter", "GeneformerAdapter", "ScGPTAdapter", "ScGPTModel", "EXPRESSION", "ROWS",
    "demo_adapter", "pbmc68k_counts", "DEMO_DIR", "load_mapping", "convert_to_json", "GeneMapping",
    "map_genes", "CellSource", "Survey", "survey", "rank_value_encode", "bin_values", "PlantedInterferonPBMC",
]
