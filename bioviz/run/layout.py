"""The study folder's layout: the stages in order, where each writes, and the run record."""

STAGES = ("cohort", "extract", "train", "encode", "associate", "interpret", "report")
RECORD = "run.json"
# where each stage writes, inside the study folder
ARTIFACTS = {"cohort": "cohort", "extract": "store", "train": "sae", "encode": "features.h5ad",
             "associate": "findings", "interpret": "interpretation", "report": "report"}
