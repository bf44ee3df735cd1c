"""Model pieces: `sam` (SAM built from a geometry), `lisa` (LLaVA + SAM + [SEG] head)."""
