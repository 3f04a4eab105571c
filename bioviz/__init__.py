"""bioviz: candidate biomarkers from inside foundation models."""
