"""lpld_pipeline: squeeze, class-wise synthesis, relabel and student training for LPLD."""
